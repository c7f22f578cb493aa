"""Network-based boundary losses: boundary-aware bins and their decoder, InverseForm, conditional boundary loss."""

from __future__ import annotations

import itertools
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from medseg.engine import BatchAuxLoss
from medseg.losses import (
    BoundaryAwareDecoder,
    BoundaryAwareLoss,
    CompoundLoss,
    ConditionalBoundaryLoss,
    InverseFormLoss,
    decode_distance_bins,
)
from medseg.networks import TransUNet
from medseg.networks.features import FeatureHook, HookedFeaturesLoss
from medseg.networks.inverseform import (
    InverseTransformNet,
    boundary_map,
    load_inverse_transform_net,
    save_inverse_transform_net,
    synthetic_pairs,
    train_inverse_transform_net,
)
from medseg.transforms import distance_maps

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_inverseform.py"


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).double()


# ---------------------------------------------------------------------------------------------------------------
# boundary-aware loss and decoder


def test_boundary_aware_hand_worked_bins_and_bce():
    # one row of four voxels, labels 0 1 1 1; K = 2 bins, R = 2, bin width 1. Distance to the nearest voxel of
    # another class: class 1 has 1, 2, 3 at voxels 1..3 -> truncated 1, 2, 2 -> bins 1, 2, 2; class 0 has 1 at
    # voxel 0 -> bin 1. Targets [D_c = k] per channel c·K + k − 1:
    targets = np.array(
        [
            [1, 0, 0, 0],  # class 0, bin 1
            [0, 0, 0, 0],  # class 0, bin 2
            [0, 1, 0, 0],  # class 1, bin 1
            [0, 0, 1, 1],  # class 1, bin 2
        ],
        dtype=np.float64,
    )
    logits = np.array([[2.0, -1.0, 0.5, 0.0], [-3.0, 1.0, 0.0, 2.0], [0.0, 1.5, -2.0, -1.0], [1.0, -0.5, 3.0, 0.25]])
    # BCE with logits: log(1 + e^x) − t·x, averaged over 4 voxels × 2 classes × 2 bins
    expected = np.mean(np.log1p(np.exp(logits)) - targets * logits)
    input = torch.tensor(logits).view(1, 4, 1, 4)
    labels = torch.tensor([0, 1, 1, 1]).view(1, 1, 1, 4)
    loss = BoundaryAwareLoss(num_bins=2, truncation=2.0)
    assert loss(input, labels).item() == pytest.approx(expected, rel=1e-12)
    # the same with the bins as the pipeline caches them
    bins = distance_maps(one_hot(labels, 2), "quantized", bins=2, truncation=2.0)
    assert loss(input, labels, dist=bins).item() == pytest.approx(expected, rel=1e-12)
    # class 1 only: the mean of its two rows
    without_background = BoundaryAwareLoss(num_bins=2, truncation=2.0, include_background=False)
    rows = np.log1p(np.exp(logits[2:])) - targets[2:] * logits[2:]
    assert without_background(input, labels).item() == pytest.approx(rows.mean(), rel=1e-12)
    # ignored voxel 3 (label 255): it takes no part in the mean
    ignoring = BoundaryAwareLoss(num_bins=2, truncation=2.0, ignore_index=255)
    partial = torch.tensor([0, 1, 1, 255]).view(1, 1, 1, 4)
    # with voxel 3 unknown, voxel 2's nearest voxel of another class is still voxel 0 (distance 2): bins unchanged
    terms = np.log1p(np.exp(logits[:, :3])) - targets[:, :3] * logits[:, :3]
    assert ignoring(input, partial).item() == pytest.approx(terms.mean(), rel=1e-12)


def test_boundary_aware_checks_layout_and_bins():
    loss = BoundaryAwareLoss(num_bins=3)
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="K=3 bin channels per class"):
        loss(torch.zeros(1, 4, 4, 4), labels)
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(1, 6, 4, 4), labels, dist=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"bins 0..3"):
        loss(torch.zeros(1, 6, 4, 4), labels, dist=torch.full((1, 2, 4, 4), 4.0))


def dense_boundary_aware(logits, labels, num_bins, truncation, include_background=True, ignore_index=None):
    """The boundary-aware loss written densely with torch's BCE: the (B, C·K, *S) bin targets and terms tensors."""
    num_classes = logits.shape[1] // num_bins
    known = torch.ones_like(labels, dtype=logits.dtype) if ignore_index is None else (labels != ignore_index).double()
    onehot = one_hot(torch.where(known > 0, labels, 0), num_classes)
    bins = distance_maps(onehot, "quantized", None, known, truncation=truncation, bins=num_bins)
    targets = bins_as_probabilities(bins, num_bins)
    terms = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none") * known
    if not include_background:
        terms = terms[:, num_bins:]
    return terms.sum() / (known.sum() * terms.shape[1])


@pytest.mark.parametrize(
    ("spatial", "include_background", "ignore_index"),
    [((13, 11), True, None), ((13, 11), False, 255), ((6, 5, 7), True, 255), ((6, 5, 7), False, None)],
)
def test_boundary_aware_value_and_gradient_equal_the_dense_bce(spatial, include_background, ignore_index, monkeypatch):
    import medseg.losses.boundary_networks as module

    monkeypatch.setattr(module, "_CHUNK", 97)  # many chunks, the last one partial
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (2, 1, *spatial), generator=generator)
    labels[1] = 0  # an image without foreground: its class-1 and class-2 bins are all 0
    if ignore_index is not None:
        labels[0, 0, :3] = ignore_index
    logits = (4 * torch.randn(2, 3 * 4, *spatial, generator=generator, dtype=torch.float64)).requires_grad_(True)
    loss = BoundaryAwareLoss(
        num_bins=4, truncation=3.0, include_background=include_background, ignore_index=ignore_index
    )
    value = loss(logits, labels)
    (grad,) = torch.autograd.grad(value, logits)
    dense = dense_boundary_aware(logits, labels, 4, 3.0, include_background, ignore_index)
    (expected_grad,) = torch.autograd.grad(dense, logits)
    assert value.item() == pytest.approx(dense.item(), rel=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    # the cached map gives the same; "sum" is the mean times the number of terms
    onehot = one_hot(torch.where(labels == 255, 0, labels), 3)
    known = None if ignore_index is None else (labels != ignore_index).double()
    bins = distance_maps(onehot, "quantized", None, known, truncation=3.0, bins=4)
    assert loss(logits, labels, dist=bins).item() == pytest.approx(dense.item(), rel=1e-12)
    total = BoundaryAwareLoss(4, 3.0, None, include_background, "sum", ignore_index)(logits, labels)
    voxels = labels.numel() if ignore_index is None else int((labels != ignore_index).sum())
    assert total.item() == pytest.approx(dense.item() * voxels * (3 if include_background else 2) * 4, rel=1e-12)


def test_boundary_aware_bin_cross_entropy_passes_gradcheck():
    from medseg.losses.boundary_networks import _BinCrossEntropySum

    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 2, 3, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    levels = torch.randint(0, 4, (2, 2, 4, 5), generator=generator).double()
    mask = (torch.rand(2, 1, 4, 5, generator=generator) > 0.3).double()
    for grad_ahead in (True, False):  # the gradient written in the forward, or computed in the backward
        assert torch.autograd.gradcheck(_BinCrossEntropySum.apply, (logits, levels, mask, grad_ahead))
        assert torch.autograd.gradcheck(_BinCrossEntropySum.apply, (logits, levels, None, grad_ahead))


def test_boundary_aware_gradient_written_ahead_survives_a_second_backward(monkeypatch):
    import medseg.losses.boundary_networks as module

    monkeypatch.setattr(module, "_CHUNK", 97)
    generator = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 3, (2, 1, 9, 8), generator=generator)
    labels[0, 0, :2] = 255
    logits = (4 * torch.randn(2, 3 * 4, 9, 8, generator=generator, dtype=torch.float64)).requires_grad_(True)
    value = BoundaryAwareLoss(4, 3.0, ignore_index=255)(logits, labels)
    first = torch.autograd.grad(3 * value, logits, retain_graph=True)[0]  # the one written in the forward
    second = torch.autograd.grad(2 * value, logits)[0]  # computed afresh
    dense = dense_boundary_aware(logits, labels, 4, 3.0, ignore_index=255)
    (expected,) = torch.autograd.grad(dense, logits)
    torch.testing.assert_close(first, 3 * expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(second, 2 * expected, rtol=1e-12, atol=1e-15)


def test_boundary_aware_peak_memory_is_about_one_gradient(monkeypatch):
    # forward+backward allocates the gradient (as large as the C·K logits) and chunk-sized temporaries, no
    # C·K-wide target or term tensor (the dense BCE peaks at 3 logits' sizes or more)
    import medseg.losses.boundary_networks as module

    # chunks small next to this input, as they are on a real one
    monkeypatch.setattr(module, "_CHUNK", 1 << 12, raising=False)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bench_losses import peak_extra_bytes

    generator = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 3, (2, 1, 96, 96), generator=generator)
    logits = torch.randn(2, 3 * 5, 96, 96, generator=generator, requires_grad=True)
    bins = distance_maps(one_hot(labels, 3).float(), "quantized", bins=5, truncation=5.0)
    peak = peak_extra_bytes(BoundaryAwareLoss(), logits, labels, {"dist": bins})
    assert peak < 1.5 * logits.numel() * logits.element_size()


def bins_as_probabilities(bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    """(B, C, *S) bin indices -> (B, C·K, *S) one-hot bin maps, channel c·K + k − 1."""
    levels = torch.arange(1, num_bins + 1).view(1, 1, -1, *([1] * (bins.ndim - 2)))
    return (bins.unsqueeze(2) == levels).double().flatten(1, 2)


@pytest.mark.parametrize(
    ("shape", "spacing", "num_bins", "truncation"),
    [((2, 1, 17, 15), None, 5, 5.0), ((1, 1, 16, 14), (1.0, 2.0), 4, 3.0), ((1, 1, 9, 10, 8), (2.0, 1.0, 1.5), 3, 2.5)],
    ids=["2d", "2d-anisotropic", "3d-anisotropic"],
)
def test_decoding_exact_bins_gives_back_the_mask(shape, spacing, num_bins, truncation):
    generator = torch.Generator().manual_seed(3)
    # blocky random label maps: three classes on a coarse grid, upsampled, so that classes have interiors
    coarse = torch.randint(0, 3, (shape[0], 1, *(max(1, n // 4) for n in shape[2:])), generator=generator)
    labels = torch.nn.functional.interpolate(coarse.double(), size=shape[2:], mode="nearest").long()
    onehot = one_hot(labels, 3)
    bins = distance_maps(onehot, "quantized", spacing, truncation=truncation, bins=num_bins)
    assert bins.max() == num_bins  # deep voxels reach the last bin, so the largest balls are exercised
    decoded = decode_distance_bins(bins_as_probabilities(bins, num_bins), num_bins, truncation, spacing)
    assert torch.equal(decoded > 0.5, onehot > 0)


def test_decoding_one_voxel_gives_a_ball_of_its_bin_radius():
    # K = 5, R = 5: width 1, bin 3 -> radius 2. In 2D the integer offsets with x² + y² <= 4: the centre, 4 at
    # distance 1, 4 diagonals at √2, 4 at distance 2: 13 voxels. With spacing (1, 2) mm: y² + (2x)² <= 4 leaves
    # x = 0, y = -2..2 and x = ±1, y = 0: 7 voxels.
    probs = torch.zeros(1, 5, 9, 9)
    probs[0, 2, 4, 4] = 0.8
    decoded = decode_distance_bins(probs, 5, 5.0)
    assert decoded.shape == (1, 1, 9, 9)
    assert int((decoded == 0.8).sum()) == 13 and int((decoded == 0).sum()) == 81 - 13
    assert int((decode_distance_bins(probs, 5, 5.0, spacing=(1.0, 2.0)) == 0.8).sum()) == 7
    # bin 1 has radius 0: only the voxel itself; the decoder module applies the sigmoid first
    logits = torch.full((1, 5, 9, 9), -30.0)
    logits[0, 0, 1, 1] = 30.0
    mask = BoundaryAwareDecoder(5, 5.0)(logits) > 0.5
    assert mask.sum() == 1 and mask[0, 0, 1, 1]


# ---------------------------------------------------------------------------------------------------------------
# InverseForm


@pytest.fixture(scope="module")
def inverse_net_path(tmp_path_factory) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = InverseTransformNet(tile_size=8, channels=(4, 8), hidden=8)
    return save_inverse_transform_net(net, tmp_path_factory.mktemp("inverseform") / "net.pt")


def test_missing_or_corrupt_checkpoint_raises_naming_it(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt.*train_inverseform\.py"):
        InverseFormLoss(checkpoint=missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pt.*not a readable torch file"):
        InverseFormLoss(checkpoint=garbage)
    foreign = tmp_path / "state_dict.pt"
    torch.save(InverseTransformNet(8, (4,), 8).state_dict(), foreign)
    with pytest.raises(ValueError, match=r"state_dict\.pt.*not an InverseTransformNet checkpoint"):
        InverseFormLoss(checkpoint=foreign)
    broken = tmp_path / "broken.pt"
    checkpoint = {"kind": "medseg.InverseTransformNet", "config": {"tile_size": 8, "channels": [4], "hidden": 8}}
    torch.save({**checkpoint, "state_dict": InverseTransformNet(8, (8,), 8).state_dict()}, broken)
    with pytest.raises(ValueError, match=r"broken\.pt.*corrupt"):
        InverseFormLoss(checkpoint=broken)


def test_training_script_writes_a_checkpoint_the_loss_loads(tmp_path, monkeypatch):
    out = tmp_path / "inverse_net.pt"
    argv = ["--out", str(out), "--steps", "3", "--batch-size", "4", "--tile-size", "16", "--channels", "4", "8"]
    argv += ["--hidden", "8", "--threads", str(torch.get_num_threads())]
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exit_status.value.code == 0
    net = load_inverse_transform_net(out)
    assert net.config == {"tile_size": 16, "channels": [4, 8], "hidden": 8}
    assert not any(p.requires_grad for p in net.parameters())
    loss = InverseFormLoss(checkpoint=out, softmax=True)
    logits = torch.randn(2, 3, 20, 20, requires_grad=True)
    value = loss(logits, torch.randint(0, 3, (2, 1, 20, 20)))
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0


def test_short_training_beats_the_identity_baseline():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: a busy thread pool makes these steps many times slower
    try:
        _, report = train_inverse_transform_net(steps=400, tile_size=16, channels=(8, 16), hidden=128)
    finally:
        torch.set_num_threads(threads)
    # held-out mean squared error of θ's six entries, against always answering the identity (measured: 0.6×)
    assert report["mse"] < 0.8 * report["identity_mse"]


def test_identity_pairs_are_identical_maps():
    # pairs drawn with θ = I (10 % of them) must be the same map twice: the grid_sample convention moved(u) = fixed(θu)
    moved, fixed, theta = synthetic_pairs(64, 16, torch.Generator().manual_seed(0))
    identity = (theta == torch.eye(3)).flatten(1).all(1)
    assert identity.any() and (~identity).any()
    assert torch.allclose(moved[identity], fixed[identity], atol=1e-6)
    assert (moved[~identity] - fixed[~identity]).abs().flatten(1).amax(1).min() > 0.1


def test_boundary_map_hand_worked():
    # a 2×2 square in a 5×5 patch: max − min over 3×3 windows is 1 on the square and its 8-neighbour ring
    mask = torch.zeros(1, 1, 5, 5)
    mask[0, 0, 1:3, 1:3] = 1.0
    expected = torch.zeros(5, 5)
    expected[0:4, 0:4] = 1.0
    assert torch.equal(boundary_map(mask)[0, 0], expected)
    # with the first row unknown: windows skip it and its voxels get 0; the rest is unchanged
    known = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    known[0, 0, 0] = False
    expected[0] = 0.0
    assert torch.equal(boundary_map(mask, known)[0, 0], expected)


def loop_boundary(plane: np.ndarray) -> np.ndarray:
    """Max − min over the 3×3 window clipped at the border, by loops."""
    height, width = plane.shape
    out = np.zeros_like(plane)
    for y, x in itertools.product(range(height), range(width)):
        window = plane[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
        out[y, x] = window.max() - window.min()
    return out


@pytest.mark.parametrize("calibrate", [True, False])
def test_inverse_form_matches_a_loop_recomputation(inverse_net_path, calibrate):
    generator = torch.Generator().manual_seed(5)
    probs = torch.rand(2, 2, 10, 12, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 1, 10, 12), generator=generator)
    loss = InverseFormLoss(checkpoint=inverse_net_path, calibrate=calibrate, reduction="none").double()
    net = load_inverse_transform_net(inverse_net_path).double()
    target = one_hot(labels, 2).numpy()
    expected = np.zeros((2, 2))
    for b, c in itertools.product(range(2), range(2)):
        predicted = np.zeros((16, 16))  # 10×12 zero-padded to whole 8×8 tiles
        ground_truth = np.zeros((16, 16))
        predicted[:10, :12] = loop_boundary(probs[b, c].numpy())
        ground_truth[:10, :12] = loop_boundary(target[b, c])
        distances = []
        for y, x in itertools.product((0, 8), (0, 8)):
            tile_p = torch.tensor(predicted[y : y + 8, x : x + 8]).view(1, 1, 8, 8)
            tile_g = torch.tensor(ground_truth[y : y + 8, x : x + 8]).view(1, 1, 8, 8)
            with torch.no_grad():
                theta = net(tile_p, tile_g)[0].numpy()
                reference = net(tile_g, tile_g)[0].numpy() if calibrate else np.eye(3)
            distances.append(np.sqrt(((theta - reference) ** 2).sum()))
        expected[b, c] = np.mean(distances)
    assert np.allclose(loss(probs, labels)[..., 0, 0].detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_inverse_form_is_zero_at_a_perfect_prediction(inverse_net_path):
    labels = torch.zeros(1, 1, 12, 12, dtype=torch.long)
    labels[0, 0, 3:9, 2:7] = 1
    loss = InverseFormLoss(checkpoint=inverse_net_path).double()
    perfect = one_hot(labels, 2)  # probabilities (no activation): the boundary maps are identical
    assert loss(perfect, labels).item() == 0.0
    assert loss(perfect.roll(2, dims=-1), labels).item() > 1e-4


def test_inverse_form_3d_is_the_mean_over_slices(inverse_net_path):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 6, 5, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 1, 6, 5, 4), generator=generator)
    loss = InverseFormLoss(checkpoint=inverse_net_path, softmax=True, reduction="none").double()
    slices = torch.stack([loss(logits[..., d], labels[..., d]) for d in range(4)])
    assert torch.allclose(loss(logits, labels)[..., 0], slices.mean(0))


# ---------------------------------------------------------------------------------------------------------------
# conditional boundary loss


def test_conditional_boundary_hand_worked():
    # one row of three voxels, labels 0 1 1, features f0 = (1, 0), f1 = (1, 1), f2 = (0, 1); 3-wide window,
    # boundary band of 1 voxel. Anchors: voxel 0 (neighbour 1 is class 1) and voxel 1 (neighbour 0); voxel 2 sees
    # only voxel 1, of its own class. Logits (1, 0), (0, 1), (0, ln 3): every voxel is correctly classified.
    # Anchor 0 (class 0): no same-class neighbour (no A2C terms); pair with voxel 1: cos = 1/√2, target 0 -> 1/2.
    # Anchor 1 (class 1): pairs with voxel 0 (cos 1/√2, target 0) and voxel 2 (cos 1/√2, target 1):
    #   P = (1/2 + (1 − 1/√2)²) / 2; class centre = logits of voxel 2: CE = −log(3/4) = log(4/3);
    #   distance to the correct same-class centre f2: ((1 − 0)² + (1 − 1)²) / 2 = 1/2.
    # L_0 = 1 · 1/2; L_1 = P + 0.2 log(4/3) + 2 · 1/2; mean over the two classes with anchors.
    pair_1 = (0.5 + (1 - 1 / math.sqrt(2)) ** 2) / 2
    expected = (0.5 + pair_1 + 0.2 * math.log(4 / 3) + 1.0) / 2
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, math.log(3)]], dtype=torch.float64).T.reshape(1, 2, 1, 3)
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64).T.reshape(1, 2, 1, 3)
    labels = torch.tensor([0, 1, 1]).view(1, 1, 1, 3)
    loss = ConditionalBoundaryLoss(kernel_size=3, boundary_ratio=0.0)
    assert loss(logits, labels, features=features).item() == pytest.approx(expected, rel=1e-12)
    # voxel 2 misclassified (logits (ln 3, 0)): it leaves every pair and the distance centre; the class centre is
    # still voxel 2's logits, now CE = log 4. L_1 = 1/2 + 0.2 log 4.
    logits[0, :, 0, 2] = torch.tensor([math.log(3), 0.0], dtype=torch.float64)
    expected_wrong = (0.5 + 0.5 + 0.2 * math.log(4)) / 2
    assert loss(logits, labels, features=features).item() == pytest.approx(expected_wrong, rel=1e-12)
    # without background anchors: class 1 only
    no_background = ConditionalBoundaryLoss(kernel_size=3, boundary_ratio=0.0, include_background=False)
    assert no_background(logits, labels, features=features).item() == pytest.approx(0.5 + 0.2 * math.log(4))


def loop_conditional_boundary(logits, labels, features, kernel_size, width, ignore_index=None):
    """The conditional boundary loss by loops over voxels and neighbours (defaults' weights, mean over classes)."""
    logits, features = logits.numpy(), features.numpy()
    labels = labels[:, 0].numpy()
    batch, num_classes = logits.shape[:2]
    spatial = labels.shape[1:]
    known = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    predicted = logits.argmax(1)
    radius = kernel_size // 2
    sums = {name: np.zeros(num_classes) for name in ("pair", "pairs", "ce", "ces", "dist", "dists")}
    has_anchor = np.zeros(num_classes, bool)
    for b in range(batch):
        for i in itertools.product(*(range(n) for n in spatial)):
            if not known[(b, *i)]:
                continue
            y = labels[(b, *i)]

            def inside(j, b=b):
                return all(0 <= j_a < n for j_a, n in zip(j, spatial, strict=True)) and known[(b, *j)]

            near = itertools.product(*(range(i_a - width, i_a + width + 1) for i_a in i))
            if not any(inside(j) and labels[(b, *j)] != y for j in near):
                continue
            has_anchor[y] = True
            f_i = features[(b, slice(None), *i)]
            same_logits, correct_same, pair_errors = [], [], []
            for offset in itertools.product(range(-radius, radius + 1), repeat=len(spatial)):
                j = tuple(i_a + o for i_a, o in zip(i, offset, strict=True))
                if not any(offset) or not inside(j):
                    continue
                y_j = labels[(b, *j)]
                correct = predicted[(b, *j)] == y_j
                f_j = features[(b, slice(None), *j)]
                if y_j == y:
                    same_logits.append(logits[(b, slice(None), *j)])
                    if correct:
                        correct_same.append(f_j)
                if correct:
                    cosine = f_i @ f_j / (np.linalg.norm(f_i) * np.linalg.norm(f_j))
                    pair_errors.append((cosine - float(y_j == y)) ** 2)
            sums["pair"][y] += sum(pair_errors)
            sums["pairs"][y] += len(pair_errors)
            if same_logits:
                centre = np.mean(same_logits, 0)
                sums["ce"][y] += np.log(np.exp(centre).sum()) - centre[y]
                sums["ces"][y] += 1
            if correct_same:
                sums["dist"][y] += np.mean((f_i - np.mean(correct_same, 0)) ** 2)
                sums["dists"][y] += 1
    per_class = (
        sums["pair"] / np.maximum(sums["pairs"], 1)
        + 0.2 * sums["ce"] / np.maximum(sums["ces"], 1)
        + 2.0 * sums["dist"] / np.maximum(sums["dists"], 1)
    )
    return per_class.sum() / max(has_anchor.sum(), 1)


@pytest.mark.parametrize(
    ("spatial", "kernel_size", "ratio"), [((9, 8), 5, 0.02), ((7, 9), 3, 0.2), ((5, 4, 6), 3, 0.02)]
)
def test_conditional_boundary_matches_a_loop_recomputation(spatial, kernel_size, ratio):
    generator = torch.Generator().manual_seed(11)
    labels = torch.randint(0, 3, (2, 1, *spatial), generator=generator)
    labels[0, 0, 0] = 255
    logits = torch.randn(2, 3, *spatial, generator=generator, dtype=torch.float64)
    features = torch.randn(2, 4, *spatial, generator=generator, dtype=torch.float64)
    width = max(1, round(ratio * math.sqrt(sum(n * n for n in spatial))))
    expected = loop_conditional_boundary(logits, labels, features, kernel_size, width, ignore_index=255)
    loss = ConditionalBoundaryLoss(kernel_size=kernel_size, boundary_ratio=ratio, ignore_index=255)
    assert loss(logits, labels, features=features).item() == pytest.approx(expected, rel=1e-10)


def dense_conditional_boundary(logits, labels, features, kernel_size=5, ratio=0.02, include_background=True):
    """The conditional boundary loss as shifted full-grid tensors under autograd (the formula before the window
    sums became one Function): anchors by a C-channel max-pool, every offset of the window one after the other.
    ``labels`` ``(B, *S)`` with -1 where unknown; logits and features on the same grid; mean over classes."""
    known = labels >= 0
    num_classes, spatial = logits.shape[1], labels.shape[1:]
    pool = torch.nn.functional.max_pool2d if len(spatial) == 2 else torch.nn.functional.max_pool3d
    width = max(1, round(ratio * math.sqrt(sum(n * n for n in spatial))))
    onehot = torch.nn.functional.one_hot(labels.clamp_min(0), num_classes).movedim(-1, 1) & known.unsqueeze(1)
    near_other = pool((known.unsqueeze(1) & ~onehot).double(), 2 * width + 1, 1, width) > 0
    anchors = (onehot & near_other).any(1) & ((labels != 0) | include_background)
    correct = (logits.detach().argmax(1) == labels) & known
    radius = kernel_size // 2
    pad = [radius] * (2 * len(spatial))
    unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    padded = [torch.nn.functional.pad(x, pad) for x in (features, unit, logits)]
    padded_labels = torch.nn.functional.pad(labels, pad, value=-1)
    padded_correct = torch.nn.functional.pad(correct, pad, value=False)
    correct_sum, class_sum = torch.zeros_like(features), torch.zeros_like(logits)
    correct_count, same_count, pair_error, pair_count = (torch.zeros_like(features[:, 0]) for _ in range(4))
    for offset in itertools.product(range(-radius, radius + 1), repeat=len(spatial)):
        if not any(offset):
            continue
        window = (slice(None), *(slice(radius + o, radius + o + n) for o, n in zip(offset, spatial, strict=True)))
        channels = (slice(None), *window)
        same, neighbour_correct = padded_labels[window] == labels, padded_correct[window]
        same_correct = (same & neighbour_correct).unsqueeze(1).double()
        correct_sum = correct_sum + padded[0][channels] * same_correct
        correct_count = correct_count + same_correct[:, 0]
        class_sum = class_sum + padded[2][channels] * same.unsqueeze(1)
        same_count = same_count + same
        cosine = (unit * padded[1][channels]).sum(1)
        pair_error = pair_error + neighbour_correct * (cosine - same.double()) ** 2
        pair_count = pair_count + neighbour_correct
    centre = (correct_sum / correct_count.clamp_min(1).unsqueeze(1)).detach()
    distance = ((features - centre) ** 2).mean(1)
    class_term = torch.nn.functional.cross_entropy(
        class_sum / same_count.clamp_min(1).unsqueeze(1), labels.clamp_min(0), reduction="none"
    )
    total, classes = 0.0, 0
    for c in range(num_classes):
        mine = anchors & (labels == c)
        if not mine.any():
            continue
        classes += 1
        for value, weight, scale in (
            (pair_error / pair_count.clamp_min(1), pair_count, 1.0),
            (class_term, (same_count > 0).double(), 0.2),
            (distance, (correct_count > 0).double(), 2.0),
        ):
            w = mine * weight
            total = total + scale * torch.where(w > 0, value * w, 0.0).sum() / w.sum().clamp_min(1e-12)
    return total / max(classes, 1)


@pytest.mark.parametrize(
    ("spatial", "kernel_size", "include_background"),
    [((12, 11), 5, True), ((12, 11), 3, False), ((7, 6, 8), 5, True), ((7, 6, 8), 3, False)],
)
def test_conditional_boundary_value_and_gradients_equal_the_dense_formula(spatial, kernel_size, include_background):
    import medseg.losses.boundary_networks as module

    generator = torch.Generator().manual_seed(12)
    coarse = torch.randint(0, 3, (2, 1, *(max(2, n // 3) for n in spatial)), generator=generator)
    labels = torch.nn.functional.interpolate(coarse.double(), size=spatial, mode="nearest").long()
    labels[1] = 0  # an image without foreground: only its background voxels' pairs
    labels[0, 0, :2] = 255  # ignored
    logits = torch.randn(2, 3, *spatial, generator=generator, dtype=torch.float64, requires_grad=True)
    features = torch.randn(2, 4, *spatial, generator=generator, dtype=torch.float64, requires_grad=True)
    loss = ConditionalBoundaryLoss(kernel_size, include_background=include_background, ignore_index=255)
    for block in (101, module._PAIR_BLOCK):  # blocks of pairs: many (the last one partial) or one
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, "_PAIR_BLOCK", block)
            value = loss(logits, labels, features=features)
        grads = torch.autograd.grad(value, (logits, features))
        dense = dense_conditional_boundary(
            logits, torch.where(labels == 255, -1, labels)[:, 0], features, kernel_size, 0.02, include_background
        )
        expected = torch.autograd.grad(dense, (logits, features))
        assert value.item() == pytest.approx(dense.item(), rel=1e-12)
        for grad, reference in zip(grads, expected, strict=True):
            torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-14)
    # no anchor at all (a single class): 0, and no gradient
    empty = loss(logits, torch.zeros_like(labels), features=features)
    assert empty.item() == 0.0
    assert all(g.abs().max() == 0 for g in torch.autograd.grad(empty, (logits, features), allow_unused=False))


def test_conditional_boundary_window_sums_pass_gradcheck():
    from medseg.losses.boundary_networks import _FlatWindow, _WindowSums

    generator = torch.Generator().manual_seed(13)
    window = _FlatWindow((3, 4), 1)
    unit = torch.randn(3, window.size * 2, generator=generator, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 2, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = window.flatten(torch.randint(-1, 2, (2, 1, 3, 4), generator=generator), -1)[0]
    correct = torch.rand(2, 3, 4, generator=generator) > 0.4
    features = torch.randn(2, 3, 3, 4, generator=generator, dtype=torch.float64)

    def sums(u, z):
        return _WindowSums.apply(u, z, labels, correct, features, window)

    assert torch.autograd.gradcheck(sums, (unit, logits))


def test_conditional_boundary_keeps_no_feature_wide_tensor_per_offset():
    # a 5×5×5 window has 124 offsets: the dense formula keeps F- and C-wide products of each for the backward
    # pass (64 feature maps' worth here); the window sums keep one cosine and one bool per pair offset
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bench_losses import peak_extra_bytes

    generator = torch.Generator().manual_seed(14)
    coarse = torch.randint(0, 3, (1, 1, 6, 6, 6), generator=generator)
    labels = torch.nn.functional.interpolate(coarse.double(), size=(24, 24, 24)).long()
    logits = torch.randn(1, 3, 24, 24, 24, generator=generator, requires_grad=True)
    features = torch.randn(1, 8, 24, 24, 24, generator=generator, requires_grad=True)
    peak = peak_extra_bytes(ConditionalBoundaryLoss(), logits, labels, {"features": features})
    assert peak < 40 * features.numel() * features.element_size()


def test_conditional_boundary_on_a_coarser_feature_grid():
    generator = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 3, (1, 1, 8, 6), generator=generator)
    logits = torch.randn(1, 3, 8, 6, generator=generator, dtype=torch.float64)
    features = torch.randn(1, 5, 4, 3, generator=generator, dtype=torch.float64)
    # on the features' grid: the first voxel of each 2×2 block carries the label, the logits are the block mean
    coarse_logits = torch.zeros(1, 3, 4, 3, dtype=torch.float64)
    for y, x in itertools.product(range(4), range(3)):
        coarse_logits[0, :, y, x] = logits[0, :, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].mean((1, 2))
    loss = ConditionalBoundaryLoss(kernel_size=3)
    expected = loss(coarse_logits, labels[..., ::2, ::2], features=features)
    assert loss(logits, labels, features=features).item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="integer"):
        loss(logits, labels, features=torch.zeros(1, 5, 4, 4, dtype=torch.float64))  # 6 is no multiple of 4


def test_conditional_boundary_checks_features():
    loss = ConditionalBoundaryLoss()
    logits, labels = torch.randn(1, 3, 6, 6), torch.zeros(1, 1, 6, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="decoder features"):
        loss(logits, labels, features=torch.zeros(1, 4, 6))
    with pytest.raises(ValueError, match="NaN"):
        loss(logits, labels, features=torch.full((1, 4, 6, 6), float("nan")))
    with pytest.raises(ValueError, match="two class channels"):
        loss(logits[:, :1], labels, features=torch.zeros(1, 4, 6, 6))


# ---------------------------------------------------------------------------------------------------------------
# the feature hook


def test_hook_on_monai_unet_leaves_the_output_and_passes_gradients():
    torch.manual_seed(0)
    net = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=1)
    images = torch.randn(2, 1, 16, 16)
    labels = torch.randint(0, 3, (2, 1, 16, 16))
    plain = net(images)
    with FeatureHook(net) as hook:
        logits = net(images)
        features = hook.features
    assert isinstance(logits, torch.Tensor) and torch.equal(logits, plain)
    # the top decoder level's input: the 4-channel skip and the 8-channel upsampled map at half resolution
    assert features.shape == (2, 12, 8, 8)
    ConditionalBoundaryLoss(kernel_size=3)(logits, labels, **{"features": features}).backward()
    first_conv = next(net.parameters())
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="no features captured"):
        hook.aux()  # removed on exit


def test_hook_on_transunet_matches_its_feature_output():
    torch.manual_seed(0)
    net = TransUNet.tiny(out_channels=3).eval()
    images = torch.randn(1, 1, 20, 27)  # padded to 32×32 inside, cropped back
    with torch.no_grad(), FeatureHook(net) as hook:
        logits = net(images)
        reference = net(images, return_features=True)
        captured = hook.features
    assert logits.shape == (1, 3, 20, 27)
    assert torch.equal(captured, reference.features)


def test_hooked_loss_in_an_engine_reads_features_from_the_hook():
    torch.manual_seed(0)
    net = UNet(2, 1, 3, channels=(4, 8), strides=(1,), num_res_units=0)
    hook = FeatureHook(net).attach()
    loss = BatchAuxLoss(HookedFeaturesLoss(CompoundLoss({"ce": 1.0, "conditional_boundary": 0.5}), hook))
    assert loss.aux_keys == ()  # nothing to take from the batch
    images, labels = torch.randn(2, 1, 12, 12), torch.randint(0, 3, (2, 1, 12, 12))
    value = loss(net(images), labels)
    direct = CompoundLoss({"ce": 1.0, "conditional_boundary": 0.5})(net(images), labels, features=hook.features)
    assert torch.allclose(value, direct)
    hook.remove()
    with pytest.raises(ValueError, match="no known feature layer"):
        FeatureHook(torch.nn.Conv2d(1, 3, 1))


# ---------------------------------------------------------------------------------------------------------------
# the benchmark's inputs for these losses (scripts/bench_losses.py)


def test_benchmark_gives_features_and_bins_of_the_bundles_networks(monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import bench_losses

    labels = bench_losses.blobby_labels((2, 3, 32, 32), torch.Generator().manual_seed(0))
    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    _, aux = bench_losses.own_inputs("conditional_boundary", ConditionalBoundaryLoss(), logits, labels)
    assert aux["features"].shape == (2, 16, 32, 32) and aux["features"].requires_grad  # TransUNet, 2D
    labels_3d = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    _, aux = bench_losses.own_inputs(
        "conditional_boundary", ConditionalBoundaryLoss(), torch.zeros(1, 3, 8, 8, 8), labels_3d
    )
    assert aux["features"].shape == (1, 32, 4, 4, 4)  # MONAI UNet's top level, 3D
    bins, aux = bench_losses.own_inputs("boundary_aware", BoundaryAwareLoss(), logits, labels)
    assert bins.shape == (2, 15, 32, 32) and bins.requires_grad
    expected = distance_maps(one_hot(labels, 3).float(), "quantized", bins=5, truncation=5.0)
    assert torch.equal(aux["dist"], expected)
    # both get rows, as the other losses do
    monkeypatch.setitem(bench_losses.WORKLOADS, "2d", (2, 3, 24, 24))
    table = bench_losses.bench_workload((2, 3, 24, 24), ["conditional_boundary", "boundary_aware"], 1, "cpu", False)
    assert (table["x_ce"] > 0).all() and list(table.index) == ["conditional_boundary", "boundary_aware"]


def test_boundary_aware_takes_an_integer_bin_map():
    """A cached map stored as uint8 bins gives the float map's value and gradient (bin 0 stays 'no bin')."""
    generator = torch.Generator().manual_seed(8)
    labels = torch.randint(0, 3, (2, 1, 9, 8), generator=generator)
    logits = torch.randn(2, 12, 9, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    onehot = one_hot(labels, 3)
    bins = distance_maps(onehot, "quantized", truncation=3.0, bins=4)
    loss = BoundaryAwareLoss(4, 3.0)
    as_float = loss(logits, labels, dist=bins)
    (float_grad,) = torch.autograd.grad(as_float, logits)
    as_bytes = loss(logits, labels, dist=bins.to(torch.uint8))
    (byte_grad,) = torch.autograd.grad(as_bytes, logits)
    dense = dense_boundary_aware(logits, labels, 4, 3.0)
    assert as_bytes.item() == pytest.approx(dense.item(), rel=1e-12) and as_float.item() == as_bytes.item()
    torch.testing.assert_close(byte_grad, float_grad, rtol=0, atol=0)
