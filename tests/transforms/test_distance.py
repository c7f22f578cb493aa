"""DistanceMap / DistanceMapd / distance_maps against scipy re-computations, hand-worked cases and MONAI pipelines."""

from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor, list_data_collate
from monai.losses import HausdorffDTLoss
from monai.transforms import Compose, EnsureTyped, RandCropByPosNegLabeld, RandFlipd, RandSpatialCropd
from scipy import ndimage

from medseg.transforms import (
    MAP_META_KEY,
    MODES,
    DistanceMap,
    DistanceMapd,
    distance_maps,
    read_map_record,
    with_map_record,
)
from medseg.transforms import _backends as backends

REGION_MODES = [m for m in MODES if m != "unet_weight"]
SPACING = {2: (0.7, 1.3), 3: (2.0, 0.8, 0.7)}


def blob_labels(spatial: tuple[int, ...]) -> np.ndarray:
    """Classes 1 and 2 as a box and a ball (two components of class 1 in 3D), class 3 absent, the rest 0."""
    labels = np.zeros(spatial, np.int64)
    grid = np.indices(spatial)
    centre = [s * 0.65 for s in spatial]
    labels[sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < (min(spatial) / 4) ** 2] = 2
    labels[tuple(slice(1, s // 2) for s in spatial)] = 1
    if len(spatial) == 3:
        labels[-3:, -3:, :2] = 1
    return labels


def onehot_of(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(labels), num_classes).movedim(-1, 0).float()


def scipy_class_map(g: np.ndarray, spacing, mode: str, truncation=5.0, bins=5) -> np.ndarray:
    """The documented map of one class, straight from scipy's EDT of the mask and of its complement."""
    inner = ndimage.distance_transform_edt(g, sampling=spacing)  # voxel of g -> nearest voxel outside g
    outer = ndimage.distance_transform_edt(~g, sampling=spacing)  # voxel outside g -> nearest voxel of g
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(g.shape, spacing, strict=True)))
    if not g.any() or g.all():
        full = bool(g.all())
        value = {"signed": -diagonal if full else diagonal, "unsigned": 0, "penalty": 0, "rrw": -1 if full else 1}
        value["quantized"] = bins if full else 0
        return np.full(g.shape, float(value[mode]))
    if mode == "signed":
        return np.where(g, -(inner - min(spacing)), outer)
    if mode == "unsigned":
        return inner + outer
    if mode == "penalty":
        hi_in, lo_in = inner[g].max(), inner[g].min()
        hi_out, lo_out = outer[~g].max(), outer[~g].min()
        return np.where(g, (hi_in - inner) / (hi_in - lo_in), (hi_out - outer) / (hi_out - lo_out))
    if mode == "rrw":
        return np.where(g, -inner / inner[g].max(), 1.0)
    return np.where(g, np.ceil(np.minimum(inner, truncation) * bins / truncation - 1e-4), 0.0)  # quantized


def scipy_unet_weight(labels: np.ndarray, spacing, w0=10.0, sigma=5.0) -> np.ndarray:
    """Ronneberger's map by brute force: EDT to every component of every foreground class, sorted per voxel."""
    counts = np.bincount(labels.ravel())
    class_weight = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 1.0)
    to_objects = []
    for c in range(1, labels.max() + 1):
        components, n = ndimage.label(labels == c)
        to_objects += [ndimage.distance_transform_edt(components != k, sampling=spacing) for k in range(1, n + 1)]
    two = np.sort(np.stack(to_objects), axis=0)[:2] / min(spacing)
    border = w0 * np.exp(-((two[0] + two[1]) ** 2) / (2 * sigma**2))
    return class_weight[labels] + np.where(labels == 0, border, 0.0)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("mode", REGION_MODES)
def test_every_mode_matches_scipy_with_anisotropic_spacing(mode, ndim):
    spatial = (14, 11) if ndim == 2 else (10, 12, 9)
    labels, spacing = blob_labels(spatial), SPACING[ndim]
    maps = DistanceMapd("label", mode=mode, num_classes=4, spacing=spacing)({"label": torch.from_numpy(labels)[None]})
    assert maps["dist"].shape == (4, *spatial) and maps["dist"].dtype == torch.float32
    for c in range(4):  # class 3 is empty: its documented constant
        expected = scipy_class_map(labels == c, spacing, mode)
        np.testing.assert_allclose(maps["dist"][c].numpy(), expected, atol=1e-4, err_msg=f"class {c}")


@pytest.mark.parametrize("ndim", [2, 3])
def test_unet_weight_matches_brute_force(ndim):
    spatial = (14, 11) if ndim == 2 else (10, 12, 9)
    labels, spacing = blob_labels(spatial), SPACING[ndim]
    weight = DistanceMap("unet_weight", num_classes=3, spacing=spacing)(torch.from_numpy(labels)[None])
    assert weight.shape == (1, *spatial)
    np.testing.assert_allclose(weight[0].numpy(), scipy_unet_weight(labels, spacing), rtol=1e-5, atol=1e-5)


def test_unet_weight_hand_worked_row():
    # objects A = x0..x1 and B = x5 (class 1): 3 of 9 voxels, so w_c = 6/3 = 2 on objects and 1 on background.
    # x2: d1 = 1 (A), d2 = 3 (B): 10·exp(−4²/50) = 7.2615; x3 (2 + 2) and x4 (1 + 3) the same;
    # x6: 1 + 5 = 6 → 10·exp(−36/50) = 4.8675; x7: 2 + 6 → 10·exp(−64/50) = 2.7804; x8: 3 + 7 → 10·exp(−2) = 1.3534.
    labels = torch.tensor([[[1, 1, 0, 0, 0, 1, 0, 0, 0]]])
    weight = DistanceMap("unet_weight", num_classes=2)(labels)[0, 0]
    expected = [2, 2, 8.2615, 8.2615, 8.2615, 2, 5.8675, 3.7804, 2.3534]
    np.testing.assert_allclose(weight.numpy(), expected, atol=1e-4)


def test_signed_hand_worked_row_is_zero_on_the_inner_layer():
    # one row, spacing 0.5 mm along it (2 mm across, never used): class 1 = x2..x5.
    # outside: x0 is 2 steps from x2 → 1.0 mm, x1 → 0.5, x6 → 0.5; inside: −(d_in − 0.5): x2, x5 (d_in 0.5) → 0,
    # x3, x4 (d_in 1.0) → −0.5.
    labels = torch.tensor([[[0, 0, 1, 1, 1, 1, 0]]])
    signed = DistanceMap("signed", num_classes=2, spacing=(2.0, 0.5))(labels)
    np.testing.assert_allclose(signed[1, 0].numpy(), [1.0, 0.5, 0, -0.5, -0.5, 0, 0.5], atol=1e-6)


def test_penalty_rrw_quantized_hand_worked_row():
    # class 1 = x0..x1, unit spacing. d_in: x0 2, x1 1; d_out: x2..x5 = 1, 2, 3, 4.
    # penalty: inside (2 − d)/(2 − 1) = 0, 1; outside (4 − d)/(4 − 1) = 1, 2/3, 1/3, 0.
    # rrw: −d_in / 2 = −1, −0.5; outside 1. quantized R = 2, K = 4 (0.5 mm bins): ⌈2/0.5⌉ = 4, ⌈1/0.5⌉ = 2; outside 0.
    labels = torch.tensor([[[1, 1, 0, 0, 0, 0]]])
    penalty = DistanceMap("penalty", num_classes=2)(labels)[1, 0]
    np.testing.assert_allclose(penalty.numpy(), [0, 1, 1, 2 / 3, 1 / 3, 0], atol=1e-6)
    rrw = DistanceMap("rrw", num_classes=2)(labels)[1, 0]
    np.testing.assert_allclose(rrw.numpy(), [-1, -0.5, 1, 1, 1, 1], atol=1e-6)
    quantized = DistanceMap("quantized", num_classes=2, truncation=2.0, bins=4)(labels)[1, 0]
    np.testing.assert_array_equal(quantized.numpy(), [4, 2, 0, 0, 0, 0])


@pytest.mark.parametrize("mode", MODES)
def test_empty_and_full_classes_get_the_documented_constants(mode):
    # all background on a 4 × 6 patch of 2 × 0.5 mm: class 0 is full, classes 1 and 2 are empty;
    # patch diagonal sqrt((4·2)² + (6·0.5)²) = sqrt(73).
    maps = DistanceMap(mode, num_classes=3, spacing=(2.0, 0.5))(torch.zeros(1, 4, 6, dtype=torch.long))
    assert torch.isfinite(maps).all()
    full, empty = {
        "signed": (-math.sqrt(73), math.sqrt(73)),
        "unsigned": (0, 0),
        "penalty": (0, 0),
        "rrw": (-1, 1),
        "quantized": (5, 0),
        "unet_weight": (1, 1),  # no object: only w_c, 1 for the only (most frequent) class
    }[mode]
    np.testing.assert_allclose(maps[0].numpy(), full, rtol=1e-6)
    np.testing.assert_allclose(maps[1:].numpy(), empty, rtol=1e-6)


def test_unsigned_equals_monai_hausdorff_distance_field():
    labels = blob_labels((12, 10))
    labels[-2:, :3] = 3  # every class present: MONAI's empty/full rule is per item, not per class
    onehot = onehot_of(labels, 4)
    ours = DistanceMap("unsigned", num_classes=4)(torch.from_numpy(labels)[None])
    monai = HausdorffDTLoss().distance_field(onehot[None])[0]
    torch.testing.assert_close(ours, monai.float(), atol=1e-5, rtol=0)
    single = torch.zeros(1, 1, 6, 5)  # a single empty channel: MONAI's field is 0, so is ours
    assert torch.equal(HausdorffDTLoss().distance_field(single)[0], DistanceMap("unsigned", num_classes=1)(single[0]))


@pytest.mark.parametrize("mode", MODES)
def test_one_hot_input_gives_the_label_map_result(mode):
    labels = blob_labels((9, 8, 7))
    from_labels = DistanceMap(mode, num_classes=4, spacing=(1.5, 1.0, 0.5))(torch.from_numpy(labels)[None])
    from_onehot = DistanceMap(mode, spacing=(1.5, 1.0, 0.5))(onehot_of(labels, 4))
    torch.testing.assert_close(from_onehot, from_labels)


def test_overlapping_multilabel_channels_are_independent():
    # nested regions (the BraTS layout): each channel is its own binary class
    labels = blob_labels((12, 12))
    channels = np.stack([labels > 0, labels == 2, np.zeros_like(labels, bool)])
    maps = DistanceMap("signed", spacing=(0.7, 1.3))(torch.from_numpy(channels.astype(np.float32)))
    for c in range(3):
        np.testing.assert_allclose(maps[c].numpy(), scipy_class_map(channels[c], (0.7, 1.3), "signed"), atol=1e-4)


def test_ignored_voxels_bound_no_class_and_get_zero():
    # row 0 0 255 1 1 1 (unit spacing), 255 ignored. class 1: outside x0 → 3, x1 → 2; inside the nearest known
    # non-1 voxel is x1: x3 → −(2 − 1) = −1, x4 → −2, x5 → −3 (treating 255 as a boundary would give 0 at x3).
    # class 0: inside x0 → −(3 − 1) = −2, x1 → −1; outside x3 → 2 (to x1), x4 → 3, x5 → 4. x2 → 0 in both.
    labels = torch.tensor([[[0, 0, 255, 1, 1, 1]]])
    signed = DistanceMap("signed", num_classes=2, ignore_index=255)(labels)
    np.testing.assert_allclose(signed[1, 0].numpy(), [3, 2, 0, -1, -2, -3], atol=1e-6)
    np.testing.assert_allclose(signed[0, 0].numpy(), [-2, -1, 0, 2, 3, 4], atol=1e-6)
    for mode in MODES:
        assert (DistanceMap(mode, num_classes=2, ignore_index=255)(labels)[:, 0, 2] == 0).all(), mode
    # one-hot with MONAI's rule: an all-zero voxel is ignored when ignore_index is not a channel
    onehot = torch.tensor([[[1.0, 1, 0, 0, 0, 0]], [[0.0, 0, 0, 1, 1, 1]]])
    torch.testing.assert_close(DistanceMap("signed", ignore_index=255)(onehot), signed)


@pytest.mark.parametrize("backend", ["edt", "sitk"])
def test_backends_agree_with_scipy_to_1e_4_mm(backend):
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((16, 20, 12)) > 0.6)
    spacing = (2.5, 0.7, 1.1)
    fast, reference = backends.get_backend(backend, torch.device("cpu")), backends.ScipyBackend()
    np.testing.assert_allclose(fast.distance_to(mask, spacing), reference.distance_to(mask, spacing), atol=1e-4)
    labels = ndimage.label(mask)[0]  # components as labels: a label map with touching labels
    np.testing.assert_allclose(
        fast.label_distances(labels, spacing), reference.label_distances(labels, spacing), atol=1e-4
    )
    labels = torch.from_numpy(mask.astype(np.int64))[None]
    maps = DistanceMap("unsigned", num_classes=2, spacing=spacing, backend=backend)(labels)
    np.testing.assert_allclose(maps[1].numpy(), scipy_class_map(mask, spacing, "unsigned"), atol=1e-4)


def test_spacing_comes_from_the_metatensor_affine():
    labels = torch.from_numpy(blob_labels((10, 9)))[None]
    meta = MetaTensor(labels, affine=torch.diag(torch.tensor([0.7, 1.3, 1.0, 1.0], dtype=torch.float64)))
    out = DistanceMap("signed", num_classes=3)(meta)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, meta.affine)
    torch.testing.assert_close(out.as_tensor(), DistanceMap("signed", num_classes=3, spacing=(0.7, 1.3))(labels))
    unit = DistanceMap("signed", num_classes=3)(labels.numpy())  # plain arrays: voxel units, same type back
    assert isinstance(unit, np.ndarray)
    np.testing.assert_allclose(unit[1], scipy_class_map(labels[0].numpy() == 1, (1.0, 1.0), "signed"), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_every_map_records_its_mode_spacing_and_parameters(mode):
    labels = torch.from_numpy(blob_labels((10, 9)))[None]
    affine = torch.diag(torch.tensor([0.7, 1.3, 1.0, 1.0], dtype=torch.float64))
    label = MetaTensor(labels, affine=affine)
    out = DistanceMap(mode, num_classes=3, bins=4, truncation=2.0, w0=3.0, sigma=2.0)(label)
    record = out.meta[MAP_META_KEY]
    assert record["mode"] == mode and torch.equal(record["spacing"], torch.tensor([0.7, 1.3], dtype=torch.float64))
    extra = {k: v for k, v in record.items() if k not in ("mode", "spacing")}
    expected = {
        "quantized": {"bins": 4, "truncation": 2.0},
        "unet_weight": {"w0": 3.0, "sigma": 2.0, "class_balance": True},
    }
    assert extra == expected.get(mode, {})
    assert MAP_META_KEY not in label.meta  # the label's own meta is left alone
    plain = DistanceMap(mode, num_classes=3, spacing=2.5)(labels)  # a plain tensor: a MetaTensor with the record
    assert read_map_record(plain).modes == (mode,)
    assert torch.equal(read_map_record(plain).spacings, torch.tensor([[2.5, 2.5]], dtype=torch.float64))


def test_the_sidecar_keeps_the_record_where_meta_is_dropped():
    labels = torch.from_numpy(blob_labels((10, 9)))[None]
    sample = DistanceMapd("label", mode="rrw", num_classes=3)({"label": labels.numpy()})
    assert isinstance(sample["dist"], np.ndarray)  # numpy in, numpy out: no meta to carry the record
    assert sample["dist_meta_dict"][MAP_META_KEY]["mode"] == "rrw"
    keys = ["label", "dist"]
    chain = Compose(
        [
            DistanceMapd("label", mode="penalty", num_classes=3, spacing=(0.5, 2.0)),
            RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(6, 6), num_samples=2),
            RandFlipd(keys, prob=1.0, spatial_axis=0),
            EnsureTyped(keys, track_meta=False),  # as the bundles end their chains
        ]
    )
    batch = list_data_collate([chain({"label": MetaTensor(labels)}) for _ in range(2)])
    assert not isinstance(batch["dist"], MetaTensor)
    dist = with_map_record(batch["dist"], batch["dist_meta_dict"])
    assert isinstance(dist, MetaTensor) and torch.equal(dist.as_tensor(), batch["dist"])
    record = read_map_record(dist)
    assert record.modes == ("penalty",) * 4  # 2 items × 2 patches
    assert torch.equal(record.spacings, torch.tensor([[0.5, 2.0]] * 4, dtype=torch.float64))
    recorded = MetaTensor(batch["dist"], meta={MAP_META_KEY: {"mode": "signed"}})
    assert with_map_record(recorded, batch["dist_meta_dict"]) is recorded  # a map's own record wins


def test_float16_output_is_close_to_float32():
    labels = torch.from_numpy(blob_labels((10, 9, 8)))[None]
    half = DistanceMap("signed", num_classes=3, dtype=torch.float16)(labels)
    single = DistanceMap("signed", num_classes=3)(labels)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), single, rtol=1e-3, atol=1e-3)


def test_batched_distance_maps_match_the_transform_per_item():
    items = [blob_labels((9, 10, 8)), np.flip(blob_labels((9, 10, 8)), 0).copy()]
    spacings = torch.tensor([[1.0, 0.8, 2.0], [0.5, 0.5, 1.0]])
    onehot = torch.stack([onehot_of(labels, 4) for labels in items])
    for mode in MODES:
        batched = distance_maps(onehot, mode, spacing=spacings)
        for b, labels in enumerate(items):
            single = DistanceMap(mode, num_classes=4, spacing=spacings[b])(torch.from_numpy(labels)[None])
            torch.testing.assert_close(batched[b], single, msg=mode)
    labels = torch.from_numpy(items[0])[None]
    ignored = torch.where(torch.arange(8) < 2, 255, labels)  # last axis: first two slices ignored
    mask = (ignored != 255).float()[None]
    torch.testing.assert_close(
        distance_maps(onehot[:1] * mask, "signed", mask=mask),
        DistanceMap("signed", num_classes=4, ignore_index=255)(ignored)[None],
    )


def organ_labels(spatial=(40, 36, 18), organs=5, seed=0) -> np.ndarray:
    """Ellipsoid 'organs' 1..organs of random sizes on background 0 (later ones overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in spatial)]
    labels = np.zeros(spatial, np.int64)
    for c in range(1, organs + 1):
        centre = [rng.uniform(0.2, 0.8) * n for n in spatial]
        radii = [rng.uniform(0.06, 0.2) * n for n in spatial]
        labels[sum(((g - m) / r) ** 2 for g, m, r in zip(grid, centre, radii, strict=True)) <= 1] = c
    return labels


def count_edt_passes(monkeypatch) -> list[tuple[int, ...]]:
    """Record the shape of every ``edt.edt`` call of the edt backend."""
    calls = []
    real_edt = backends.edt.edt
    monkeypatch.setattr(backends.edt, "edt", lambda data, *a, **k: calls.append(data.shape) or real_edt(data, *a, **k))
    return calls


def test_one_multilabel_pass_gives_every_inside_distance_and_small_classes_skip_full_passes(monkeypatch):
    calls = count_edt_passes(monkeypatch)
    binary = torch.stack([onehot_of((blob_labels((8, 9)) > 0).astype(np.int64), 2) for _ in range(3)])
    distance_maps(binary, "signed", backend="edt")
    assert calls == [(8, 9)] * 3  # one multi-label pass per item: each class's outside is the other's inside
    labels = torch.from_numpy(organ_labels())[None]
    for mode, passes in (("rrw", 1), ("quantized", 1), ("signed", 2), ("unsigned", 2), ("penalty", 2)):
        calls.clear()
        DistanceMap(mode, num_classes=6, spacing=(0.8, 0.8, 2.5))(labels)
        # the multi-label pass, then (modes with outside distances) at most the background's outside, on the box
        # around the organs; the organs' outside distances are computed inside their own boxes, without an edt pass
        assert 1 <= len(calls) <= passes, mode
        assert calls[0] == (40, 36, 18)
        assert all(np.prod(shape) < 40 * 36 * 18 for shape in calls[1:]), mode


@pytest.mark.parametrize("mode", REGION_MODES)
def test_two_label_map_matches_scipy_when_one_side_is_deeper(mode):
    # with two labels each one's outside is the other's inside; penalty normalises over the outside voxels only,
    # though the wide label's inside distances (up to 3.5) exceed its outside ones (up to 2)
    labels = np.zeros((20, 9), np.int64)
    labels[:, 2:] = 1
    maps = DistanceMap(mode, num_classes=2, spacing=(1.0, 1.0))(torch.from_numpy(labels)[None])
    for c in range(2):
        expected = scipy_class_map(labels == c, (1.0, 1.0), mode)
        np.testing.assert_allclose(maps[c].numpy(), expected, atol=1e-4, err_msg=f"class {c}")


def numpy_peak_bytes_per_voxel(mode: str, classes: int) -> float:
    """Peak numpy memory (tracemalloc) of one label-map DistanceMap call with ``classes`` small box classes."""
    rng = np.random.default_rng(0)
    labels = np.zeros((48, 40, 24), np.int64)
    for c in range(1, classes):
        x, y, z = rng.integers(4, 40), rng.integers(4, 32), rng.integers(3, 20)
        labels[x - 3 : x + 3, y - 3 : y + 3, z - 2 : z + 2] = c
    tracemalloc.start()
    try:
        DistanceMap(mode, num_classes=classes)(torch.from_numpy(labels)[None])
        return tracemalloc.get_traced_memory()[1] / labels.size
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("mode", ["signed", "rrw"])
def test_label_map_path_allocates_nothing_per_class(mode):
    # each channel is written in place (the map itself is torch's, not traced): no (C, *spatial) class masks, no
    # grid-sized distance per class; 8 -> 40 classes added 31-37 bytes per voxel before (masks and copies)
    assert numpy_peak_bytes_per_voxel(mode, 40) - numpy_peak_bytes_per_voxel(mode, 8) < 8


@pytest.mark.parametrize("mode", REGION_MODES)
def test_organ_label_map_matches_per_class_scipy(mode):
    labels, spacing = organ_labels(), (0.8, 0.8, 2.5)
    maps = DistanceMap(mode, num_classes=7, spacing=spacing)(torch.from_numpy(labels)[None])  # class 6 absent
    for c in range(7):
        expected = scipy_class_map(labels == c, spacing, mode)
        np.testing.assert_allclose(maps[c].numpy(), expected, atol=1e-4, err_msg=f"class {c}")


def test_cuda_tensors_without_cucim_fall_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(backends, "_has_cucim", False)
    monkeypatch.setattr(backends, "_warned_cpu_fallback", False)
    with pytest.warns(UserWarning, match="cuCIM"):
        assert backends.get_backend("auto", torch.device("cuda")).name == "edt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.get_backend("auto", torch.device("cuda")).name == "edt"
    assert backends.get_backend("auto", torch.device("cpu")).name == "edt"
    with pytest.raises(ValueError, match="CUDA"):
        backends.get_backend("cucim", torch.device("cpu"))


class CountingDistanceMapd(DistanceMapd):
    calls = 0

    def __call__(self, data):
        type(self).calls += 1
        return super().__call__(data)


def test_cache_dataset_computes_once_and_crop_flip_keep_image_label_dist_aligned():
    # a 3 × 4 object at rows 6..8, cols 5..8 of 16 × 14; every 12 × 12 crop contains the object with a 1-voxel margin,
    # so the crop of the full map equals the map of the cropped label (crops and flips are then exact).
    spacing = (0.8, 1.2)
    affine = torch.diag(torch.tensor([*spacing, 1.0, 1.0], dtype=torch.float64))
    items = []
    for shift in range(3):
        labels = torch.zeros(1, 16, 14, dtype=torch.long)
        labels[0, 6:9, 5 + shift // 2 : 9] = 1
        index = torch.arange(16 * 14, dtype=torch.float32).view(1, 16, 14)  # the image names its voxel
        items.append({"image": MetaTensor(index, affine=affine), "label": MetaTensor(labels, affine=affine)})
    keys = ["image", "label", "dist"]
    CountingDistanceMapd.calls = 0
    transform = Compose(
        [
            CountingDistanceMapd("label", mode="signed", num_classes=2),
            RandSpatialCropd(keys, roi_size=(12, 12), random_size=False),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
        ]
    )
    dataset = CacheDataset(items, transform, cache_rate=1.0, num_workers=0, progress=False)
    for _ in range(2):
        for i in range(3):
            sample = dataset[i]
            origin = sample["image"][0].long()
            rows, cols = origin // 14, origin % 14
            assert torch.equal(sample["label"][0].as_tensor(), items[i]["label"][0, rows, cols].as_tensor())
            full_map = DistanceMap("signed", num_classes=2, spacing=spacing)(items[i]["label"])
            assert torch.equal(sample["dist"].as_tensor(), full_map[:, rows, cols].as_tensor())
            recomputed = DistanceMap("signed", num_classes=2)(sample["label"])  # spacing from the moved affine
            torch.testing.assert_close(sample["dist"].as_tensor(), recomputed.as_tensor())
            assert read_map_record(sample["dist"]).modes == ("signed",)
            assert torch.equal(read_map_record(sample["dist"]).spacings[0], torch.tensor(spacing, dtype=torch.float64))
    assert CountingDistanceMapd.calls == 3


def test_dict_transform_leaves_the_label_alone_and_handles_several_keys():
    labels = torch.from_numpy(blob_labels((8, 8)))[None]
    data = {"a": labels.clone(), "b": labels.clone()}
    out = DistanceMapd(["a", "b"], mode="rrw", num_classes=3, output_key=["dist_a", "dist_b"])(data)
    assert torch.equal(out["a"], labels) and torch.equal(out["dist_a"], out["dist_b"])


@pytest.mark.parametrize(
    ("kwargs", "label", "match"),
    [
        ({"mode": "sdf", "num_classes": 2}, torch.zeros(1, 4, 4), "mode"),
        ({"backend": "fast", "num_classes": 2}, torch.zeros(1, 4, 4), "backend"),
        ({}, torch.zeros(1, 4, 4), "num_classes"),
        ({"num_classes": 2}, torch.full((1, 4, 4), 2), "out of range"),
        ({"num_classes": 2}, torch.full((1, 4, 4), 0.5), "non-integer"),
        ({}, torch.full((2, 4, 4), 0.5), "0 and 1"),
        ({"num_classes": 3}, torch.zeros(2, 4, 4), "channels"),
        ({"num_classes": 2, "spacing": (1.0, 1.0, 1.0)}, torch.zeros(1, 4, 4), "spacing"),
        ({"num_classes": 2, "spacing": -1.0}, torch.zeros(1, 4, 4), "positive"),
        ({"num_classes": 2}, torch.zeros(1, 4), "channel-first"),
        ({"num_classes": 2, "mode": "quantized", "bins": 0}, torch.zeros(1, 4, 4), "bins"),
        ({"mode": "unet_weight"}, torch.ones(2, 4, 4), "exclusive"),
        ({"num_classes": 2, "dtype": torch.int32}, torch.zeros(1, 4, 4), "dtype"),
    ],
)
def test_bad_input_raises_a_clear_value_error(kwargs, label, match):
    with pytest.raises(ValueError, match=match):
        DistanceMap(**kwargs)(label)


def test_distance_maps_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mask shape"):
        distance_maps(torch.zeros(2, 2, 4, 4), mask=torch.ones(2, 2, 4, 4))
    with pytest.raises(ValueError, match="onehot must be"):
        distance_maps(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="rows"):
        distance_maps(torch.zeros(2, 2, 4, 4), spacing=torch.ones(3, 2))
