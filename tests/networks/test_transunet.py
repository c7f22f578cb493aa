"""TransUNet: shapes (2D/3D, odd sizes), gradients, full-size parameter counts, checkpoints (.pt and ViT .npz)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from scipy import ndimage, special

from medseg.networks import TransUNet, resize_position_embedding

TINY_HIDDEN, TINY_HEADS, TINY_MLP, TINY_WIDTH = 32, 2, 64, 8  # TransUNet.tiny's sizes


def tiny(seed: int = 0, **kwargs) -> TransUNet:
    torch.manual_seed(seed)
    return TransUNet.tiny(**kwargs)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("spatial_dims", "in_channels", "size"),
    [
        (2, 1, (32, 32)),
        (2, 2, (37, 45)),  # odd: padded to 48 x 48 inside, cropped back
        (2, 1, (5, 70)),  # smaller than one 16-block along an axis
        (3, 1, (32, 32, 32)),
        (3, 2, (19, 33, 17)),
    ],
)
def test_output_has_input_spatial_shape(spatial_dims, in_channels, size):
    model = tiny(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=4)
    logits = model(torch.randn(2, in_channels, *size))
    assert logits.shape == (2, 4, *size)
    assert torch.isfinite(logits).all()


@pytest.mark.slow  # builds the 105M-parameter network and runs one 224 x 224 slice (about 2-5 s on 2 cores)
def test_full_size_2d_synapse_input_gives_nine_class_logits():
    model = TransUNet(spatial_dims=2, in_channels=1, out_channels=9, img_size=224).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 224, 224))
    assert logits.shape == (1, 9, 224, 224)


def test_odd_input_equals_zero_padding_to_48_and_cropping():
    model = tiny().eval()
    x = torch.randn(1, 1, 37, 45)
    # 37 -> 48: 11 more rows, 5 before and 6 after; 45 -> 48: 3 more columns, 1 before and 2 after.
    padded = F.pad(x, (1, 2, 5, 6))
    with torch.no_grad():
        expected = model(padded)[:, :, 5:42, 1:46]
        actual = model(x)
    torch.testing.assert_close(actual, expected)


def test_sliding_window_inference_accepts_the_plain_output():
    model = tiny(out_channels=2).eval()
    with torch.no_grad():
        out = sliding_window_inference(torch.randn(1, 1, 40, 50), roi_size=(32, 32), sw_batch_size=2, predictor=model)
    assert out.shape == (1, 2, 40, 50)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_features_are_what_the_segmentation_head_convolves(spatial_dims):
    model = tiny(spatial_dims=spatial_dims, out_channels=3).eval()
    x = torch.randn(1, 1, *(32,) * spatial_dims)  # a multiple of 16: no padding, so the head sees exactly these
    with torch.no_grad():
        logits, features = model(x, return_features=True)
        plain = model(x)
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    head = model.segmentation_head
    assert features.shape == (1, 8, *(32,) * spatial_dims)  # tiny decoder_channels[-1] = 8
    torch.testing.assert_close(logits, conv(features, head.weight, head.bias, padding=1))
    torch.testing.assert_close(plain, logits)


def test_bad_input_raises_value_error_naming_the_shape():
    model = tiny(in_channels=1)
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="2D TransUNet"):
        model(torch.randn(2, 1, 8, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"img_size": (32, 32, 32)}, "img_size"),
        ({"decoder_channels": (16, 8, 8)}, "four entries"),
        ({"n_skip": 4}, "n_skip"),
        ({"num_heads": 3}, "divisible by num_heads"),
        ({"norm_groups": 3}, "norm_groups"),
        ({"resnet_layers": (1, 1)}, "three stages"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransUNet.tiny(**kwargs)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (37, 45)), (3, (19, 20, 17))])
def test_gradients_reach_every_parameter(spatial_dims, size):
    model = tiny(spatial_dims=spatial_dims, out_channels=3).train()
    x = torch.randn(2, 1, *size, requires_grad=True)
    labels = torch.randint(0, 3, (2, *size))
    F.cross_entropy(model(x), labels).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- parameter counts


def expected_parameter_count(spatial_dims: int, in_channels: int, out_channels: int, tokens: int) -> int:
    """R50-ViT-B/16 TransUNet counted layer by layer from the paper's design (weights + biases/affines)."""
    k3, k7 = 3**spatial_dims, 7**spatial_dims  # kernel volumes
    width, hidden, mlp, layers = 64, 768, 3072, 12
    resnet = in_channels * width * k7 + 2 * width  # stem conv (no bias) + GroupNorm
    stage_inputs = (width, 4 * width, 8 * width)
    for stage, units in enumerate((3, 4, 9)):
        mid = width * 2**stage
        out = 4 * mid
        for unit in range(units):
            cin = stage_inputs[stage] if unit == 0 else out
            resnet += cin * mid + mid * mid * k3 + mid * out + 2 * (mid + mid + out)  # three convs + GroupNorms
            if unit == 0:
                resnet += cin * out + 2 * out  # projection conv + GroupNorm
    embedding = 16 * width * hidden + hidden + tokens * hidden  # 1x1 patch conv + position embedding
    per_layer = 4 * (hidden * hidden + hidden) + (hidden * mlp + mlp) + (mlp * hidden + hidden) + 4 * hidden
    transformer = layers * per_layer + 2 * hidden  # + final LayerNorm
    decoder = hidden * 512 * k3 + 2 * 512  # conv_more (no bias) + BatchNorm
    for block_in, skip, block_out in zip((512, 256, 128, 64), (512, 256, 64, 0), (256, 128, 64, 16), strict=True):
        decoder += (block_in + skip) * block_out * k3 + block_out * block_out * k3 + 4 * block_out
    head = 16 * out_channels * k3 + out_channels
    return resnet + embedding + transformer + decoder + head


def test_full_size_2d_parameter_count_is_the_papers_105_28m():
    with torch.device("meta"):  # shapes only: nothing allocated, nothing run
        model = TransUNet(spatial_dims=2, in_channels=3, out_channels=9, img_size=224)
    count = parameter_count(model)
    # resnet 11,894,848 + embedding 937,728 (196 tokens) + transformer 85,056,000 + decoder 7,387,200 + head 1,305
    assert count == expected_parameter_count(2, in_channels=3, out_channels=9, tokens=14 * 14) == 105_277_081
    assert round(count / 1e6, 2) == 105.28  # the figure quoted for R50-ViT-B/16 TransUNet (issue 4)


def test_full_size_3d_parameter_count_matches_the_layer_formula():
    with torch.device("meta"):
        model = TransUNet(spatial_dims=3, in_channels=1, out_channels=14, img_size=96)
    assert parameter_count(model) == expected_parameter_count(3, in_channels=1, out_channels=14, tokens=6**3)


# ---------------------------------------------------------------- position embedding


@pytest.mark.parametrize(("source", "target"), [((2, 3), (4, 5)), ((4, 4), (2, 3)), ((2, 3, 2), (3, 3, 4))])
def test_position_embedding_resize_is_linear_zoom_with_aligned_corners(source, target):
    embedding = torch.randn(1, 5, *source, dtype=torch.float64)
    zoom = (1, 1, *(t / s for t, s in zip(target, source, strict=True)))
    expected = ndimage.zoom(embedding.numpy(), zoom, order=1)  # scipy: corner-aligned grid, as the authors resize
    actual = resize_position_embedding(embedding, target)
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-12)


def test_input_of_another_grid_runs_with_the_resized_embedding():
    model = tiny(img_size=32).eval()  # grid 2 x 2
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 80)).shape == (1, 3, 64, 80)  # grid 4 x 5


# ---------------------------------------------------------------- .pt checkpoints


def test_state_dict_checkpoint_reproduces_the_saved_model(tmp_path):
    source = tiny(seed=1).eval()
    path = tmp_path / "source.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = TransUNet.tiny(pretrained=path).eval()
    fresh = tiny(seed=2).eval()
    x = torch.randn(1, 1, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
        assert not torch.allclose(fresh(x), source(x))


def test_checkpoint_of_another_img_size_gets_a_zoomed_position_embedding(tmp_path):
    source = tiny(seed=1, img_size=64)  # grid 4 x 4
    with torch.no_grad():
        source.position_embedding.normal_()
    path = tmp_path / "grid4.pth"
    torch.save(source.state_dict(), path)
    target = tiny(seed=2, img_size=32)  # grid 2 x 2
    report = target.load_pretrained(path)
    assert report.missing == [] and report.skipped == []
    # 4 -> 2 with aligned corners keeps rows/columns 0 and 3
    expected = source.position_embedding.detach()[:, :, [0, 3]][:, :, :, [0, 3]]
    torch.testing.assert_close(target.position_embedding.detach(), expected)


def test_non_strict_load_skips_a_head_of_another_class_count(tmp_path):
    source = tiny(seed=1, out_channels=9)
    path = tmp_path / "nine.pt"
    torch.save(source.state_dict(), path)
    target = tiny(seed=2, out_channels=4)
    with pytest.raises(
        ValueError, match=r"segmentation_head\.weight: checkpoint \(9, 8, 3, 3\) vs model \(4, 8, 3, 3\)"
    ):
        target.load_pretrained(path)
    report = target.load_pretrained(path, strict=False)
    assert sorted(report.skipped) == ["segmentation_head.bias", "segmentation_head.weight"]
    assert sorted(report.missing) == ["segmentation_head.bias", "segmentation_head.weight"]
    torch.testing.assert_close(target.encoder.root.conv.conv.weight, source.encoder.root.conv.conv.weight)
    torch.testing.assert_close(target.transformer[1].mlp.linear2.weight, source.transformer[1].mlp.linear2.weight)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        TransUNet.tiny(pretrained=tmp_path / "nowhere.pt")
    wrong_suffix = tmp_path / "weights.bin"
    wrong_suffix.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights\.bin.*expected \.pt, \.pth or \.npz"):
        TransUNet.tiny(pretrained=wrong_suffix)
    for corrupt in (tmp_path / "corrupt.pt", tmp_path / "corrupt.npz"):
        corrupt.write_bytes(b"not a checkpoint")
        with pytest.raises(ValueError, match=f"cannot read TransUNet checkpoint .*{corrupt.name}"):
            TransUNet.tiny(pretrained=corrupt)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(ValueError, match=r"list\.pt does not hold a state dict"):
        TransUNet.tiny(pretrained=not_a_state_dict)
    other_width = tmp_path / "hidden48.pt"
    torch.save(TransUNet.tiny(hidden_size=48).state_dict(), other_width)
    with pytest.raises(ValueError, match=r"(?s)hidden48\.pt does not fit.*patch_embedding\.weight"):
        TransUNet.tiny(pretrained=other_width)


# ---------------------------------------------------------------- ViT .npz checkpoints (JAX naming)


def write_r50_vit_npz(path, grid: int, seed: int = 0, drop: str | None = None) -> dict[str, np.ndarray]:
    """Random arrays named and shaped as in Google's R50+ViT-B/16 .npz, at the tiny preset's sizes."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}

    def put(name: str, *shape: int) -> None:
        arrays[name] = rng.standard_normal(shape).astype(np.float32)

    put("conv_root/kernel", 7, 7, 3, TINY_WIDTH)  # HWIO
    put("gn_root/scale", TINY_WIDTH)
    put("gn_root/bias", TINY_WIDTH)
    cin = TINY_WIDTH
    for block in (1, 2, 3):
        mid = TINY_WIDTH * 2 ** (block - 1)
        out = 4 * mid
        unit = f"block{block}/unit1"
        put(f"{unit}/conv1/kernel", 1, 1, cin, mid)
        put(f"{unit}/conv2/kernel", 3, 3, mid, mid)
        put(f"{unit}/conv3/kernel", 1, 1, mid, out)
        put(f"{unit}/conv_proj/kernel", 1, 1, cin, out)
        for norm, channels in (("gn1", mid), ("gn2", mid), ("gn3", out), ("gn_proj", out)):
            put(f"{unit}/{norm}/scale", channels)
            put(f"{unit}/{norm}/bias", channels)
        cin = out
    put("embedding/kernel", 1, 1, cin, TINY_HIDDEN)
    put("embedding/bias", TINY_HIDDEN)
    put("Transformer/posembed_input/pos_embedding", 1, 1 + grid * grid, TINY_HIDDEN)  # with the cls token
    head_dim = TINY_HIDDEN // TINY_HEADS
    for index in range(2):
        block = f"Transformer/encoderblock_{index}"
        for name in ("query", "key", "value"):
            put(f"{block}/MultiHeadDotProductAttention_1/{name}/kernel", TINY_HIDDEN, TINY_HEADS, head_dim)
            put(f"{block}/MultiHeadDotProductAttention_1/{name}/bias", TINY_HEADS, head_dim)
        put(f"{block}/MultiHeadDotProductAttention_1/out/kernel", TINY_HEADS, head_dim, TINY_HIDDEN)
        put(f"{block}/MultiHeadDotProductAttention_1/out/bias", TINY_HIDDEN)
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            put(f"{block}/{norm}/scale", TINY_HIDDEN)
            put(f"{block}/{norm}/bias", TINY_HIDDEN)
        put(f"{block}/MlpBlock_3/Dense_0/kernel", TINY_HIDDEN, TINY_MLP)
        put(f"{block}/MlpBlock_3/Dense_0/bias", TINY_MLP)
        put(f"{block}/MlpBlock_3/Dense_1/kernel", TINY_MLP, TINY_HIDDEN)
        put(f"{block}/MlpBlock_3/Dense_1/bias", TINY_HIDDEN)
    put("Transformer/encoder_norm/scale", TINY_HIDDEN)
    put("Transformer/encoder_norm/bias", TINY_HIDDEN)
    put("cls", 1, 1, TINY_HIDDEN)  # classification parts the segmentation network has no use for
    put("head/kernel", TINY_HIDDEN, 10)
    if drop is not None:
        del arrays[drop]
    np.savez(path, **arrays)
    return arrays


def jax_encoder_block(x: np.ndarray, arrays: dict[str, np.ndarray], index: int) -> np.ndarray:
    """ViT encoder block in float64 from the JAX arrays: ``y = x @ kernel + bias``, heads on kernel axis 1."""
    block = f"Transformer/encoderblock_{index}"
    attention = f"{block}/MultiHeadDotProductAttention_1"

    def layer_norm(values, name):
        mean, var = values.mean(-1, keepdims=True), values.var(-1, keepdims=True)
        return (values - mean) / np.sqrt(var + 1e-6) * arrays[f"{name}/scale"] + arrays[f"{name}/bias"]

    y = layer_norm(x, f"{block}/LayerNorm_0")
    q, k, v = (
        np.einsum("nd,dhc->hnc", y, arrays[f"{attention}/{name}/kernel"]) + arrays[f"{attention}/{name}/bias"][:, None]
        for name in ("query", "key", "value")
    )
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = (
        np.einsum("hnc,hcd->nd", weights @ v, arrays[f"{attention}/out/kernel"]) + arrays[f"{attention}/out/bias"]
    )
    x = x + attended
    y = layer_norm(x, f"{block}/LayerNorm_2")
    hidden = y @ arrays[f"{block}/MlpBlock_3/Dense_0/kernel"] + arrays[f"{block}/MlpBlock_3/Dense_0/bias"]
    hidden = 0.5 * hidden * (1 + special.erf(hidden / math.sqrt(2)))  # exact GELU
    return x + hidden @ arrays[f"{block}/MlpBlock_3/Dense_1/kernel"] + arrays[f"{block}/MlpBlock_3/Dense_1/bias"]


def test_npz_transformer_block_computes_the_jax_block(tmp_path):
    arrays = write_r50_vit_npz(tmp_path / "r50_vit.npz", grid=2)
    model = tiny(in_channels=3).eval()
    report = model.load_pretrained(tmp_path / "r50_vit.npz")
    assert report.missing and all(k.startswith(("decoder", "segmentation_head")) for k in report.missing)
    tokens = np.random.default_rng(1).standard_normal((5, TINY_HIDDEN))
    with torch.no_grad():
        actual = model.transformer[1](torch.from_numpy(tokens).float()[None])[0]
    np.testing.assert_allclose(actual.numpy(), jax_encoder_block(tokens, arrays, 1), rtol=1e-4, atol=1e-4)


def test_npz_stem_is_a_weight_standardised_strided_hwio_convolution(tmp_path):
    arrays = write_r50_vit_npz(tmp_path / "r50_vit.npz", grid=2)
    model = tiny(in_channels=3).eval()
    model.load_pretrained(tmp_path / "r50_vit.npz")
    image = np.random.default_rng(2).standard_normal((3, 12, 12))
    kernel = arrays["conv_root/kernel"].astype(np.float64)  # (7, 7, 3, out)
    kernel = (kernel - kernel.mean((0, 1, 2))) / np.sqrt(kernel.var((0, 1, 2)) + 1e-5)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(image, ((0, 0), (3, 3), (3, 3))), (7, 7), axis=(1, 2))
    expected = np.einsum("cijhw,hwco->oij", windows[:, ::2, ::2], kernel)  # stride 2, "same" padding 3
    with torch.no_grad():
        actual = model.encoder.root.conv(torch.from_numpy(image).float()[None])[0]
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_npz_position_embedding_drops_cls_and_zooms_the_grid(tmp_path):
    arrays = write_r50_vit_npz(tmp_path / "r50_vit.npz", grid=4)
    tokens = arrays["Transformer/posembed_input/pos_embedding"][0, 1:]  # (16, hidden): cls entry dropped
    grid = tokens.reshape(4, 4, TINY_HIDDEN).transpose(2, 0, 1)  # row-major token order
    same_grid = tiny(img_size=64)
    same_grid.load_pretrained(tmp_path / "r50_vit.npz")
    np.testing.assert_allclose(same_grid.position_embedding.detach()[0].numpy(), grid)
    other_grid = tiny(img_size=48)  # grid 3 x 3
    other_grid.load_pretrained(tmp_path / "r50_vit.npz")
    expected = ndimage.zoom(grid.astype(np.float64), (1, 3 / 4, 3 / 4), order=1)
    np.testing.assert_allclose(other_grid.position_embedding.detach()[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_npz_stem_for_one_channel_averages_the_rgb_kernel(tmp_path):
    arrays = write_r50_vit_npz(tmp_path / "r50_vit.npz", grid=2)
    model = tiny(in_channels=1)
    model.load_pretrained(tmp_path / "r50_vit.npz")
    expected = arrays["conv_root/kernel"].mean(axis=2).transpose(2, 0, 1)  # (out, 7, 7)
    np.testing.assert_allclose(model.encoder.root.conv.conv.weight.detach()[:, 0].numpy(), expected, rtol=1e-6)


def test_npz_into_3d_inflates_kernels_and_stretches_the_grid_along_depth(tmp_path):
    arrays = write_r50_vit_npz(tmp_path / "r50_vit.npz", grid=2)
    model = tiny(spatial_dims=3, in_channels=3, img_size=32)  # grid 2 x 2 x 2
    model.load_pretrained(tmp_path / "r50_vit.npz")
    root = model.encoder.root.conv.conv.weight.detach()  # (out, 3, 7, 7, 7)
    kernel_2d = torch.from_numpy(arrays["conv_root/kernel"]).permute(3, 2, 0, 1)
    for depth in range(7):
        torch.testing.assert_close(root[:, :, depth], kernel_2d / 7)
    grid = arrays["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(2, 2, TINY_HIDDEN).transpose(2, 0, 1)
    for depth in range(2):
        np.testing.assert_allclose(model.position_embedding.detach()[0, :, depth].numpy(), grid, rtol=1e-6)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 17, 20, 16)).shape == (1, 3, 17, 20, 16)


def test_npz_missing_array_is_named(tmp_path):
    write_r50_vit_npz(tmp_path / "partial.npz", grid=2, drop="block2/unit1/gn_proj/scale")
    with pytest.raises(ValueError, match=r"partial\.npz lacks 1 array.*block2/unit1/gn_proj/scale"):
        TransUNet.tiny(in_channels=3, pretrained=tmp_path / "partial.npz")


def test_npz_of_another_width_names_the_mismatch(tmp_path):
    write_r50_vit_npz(tmp_path / "r50_vit.npz", grid=2)
    with pytest.raises(ValueError, match=r"embedding/kernel \(1, 1, 128, 32\) converts to \(32, 128, 1, 1\)"):
        TransUNet.tiny(hidden_size=48, num_heads=2, pretrained=tmp_path / "r50_vit.npz")
