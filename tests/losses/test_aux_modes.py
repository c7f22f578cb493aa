"""Aux maps carry their mode and spacing: a loss given a map made in another mode, at another spacing or with other
bins raises a clear error instead of returning a wrong number; conditional_boundary refuses NaN/inf logits and a
call without features."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from medseg.engine import BatchAuxLoss
from medseg.losses import BoundaryLoss, CompoundLoss, ConditionalBoundaryLoss, HausdorffDTLoss, get_loss
from medseg.transforms import DistanceMapd, read_map_record

# loss name -> (aux key, the mode it reads, kwargs)
MAP_LOSSES = {
    "boundary": ("dist", "signed", {"softmax": True}),
    "region_wise": ("dist", "rrw", {"softmax": True}),
    "hausdorff_dt": ("dist", "unsigned", {"softmax": True}),
    "shape_aware": ("dist", "signed", {}),
    "active_boundary": ("dist", "signed", {"max_boundary_ratio": 0.3}),
    "unet_weighted_ce": ("weight", "unet_weight", {}),
}
CLASS_NAMES = {
    "boundary": "BoundaryLoss",
    "region_wise": "RegionWiseLoss",
    "hausdorff_dt": "HausdorffDTLoss",
    "shape_aware": "ShapeAwareLoss",
    "active_boundary": "ActiveBoundaryLoss",
    "unet_weighted_ce": "UNetWeightedCELoss",
}


def labelled_batch(spatial=(10, 9), seed=0, affine=None):
    """Logits (2, 3, *spatial) and two label items (1, *spatial) with compact regions (MetaTensors if affine)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64)
    items = []
    for shift in range(2):
        label = torch.zeros(1, *spatial, dtype=torch.long)
        label[0, 2 + shift : 6, 1:5] = 1
        label[0, 4:9, 5 : 8 - shift] = 2
        items.append(label if affine is None else MetaTensor(label, affine=affine))
    return x, items


def pipeline_maps(items, key="dist", **kwargs):
    """Maps as a DataLoader hands them over: DistanceMapd per item, then MONAI's list_data_collate."""
    transform = DistanceMapd("label", num_classes=3, output_key=key, **kwargs)
    return list_data_collate([transform({"label": item}) for item in items])


@pytest.mark.parametrize("name", sorted(MAP_LOSSES))
def test_a_map_made_in_another_mode_raises_naming_loss_modes_and_fix(name):
    key, mode, kwargs = MAP_LOSSES[name]
    x, items = labelled_batch(affine=torch.eye(4, dtype=torch.float64))  # as LoadImaged gives them
    y = torch.stack([item.as_tensor() for item in items])
    other = "penalty"  # in [0, 1]: inside the value range of every mode these losses read
    batch = pipeline_maps(items, key, mode=other)
    loss = get_loss(name, **kwargs)
    assert torch.isfinite(loss(x, y, **{key: batch[key].as_tensor()}))  # a plain tensor: taken as it is
    with pytest.raises(ValueError) as raised:
        loss(x, y, **{key: batch[key]})
    message = str(raised.value)
    assert CLASS_NAMES[name] in message and f"mode {mode!r}" in message and f"'{other}'" in message
    assert f"DistanceMapd(keys='label', mode={mode!r}, output_key={key!r})" in message


@pytest.mark.parametrize("name", sorted(MAP_LOSSES))
def test_a_map_of_the_right_mode_gives_the_plain_map_value(name):
    key, mode, kwargs = MAP_LOSSES[name]
    x, items = labelled_batch(seed=1)
    y = torch.stack(items)
    batch = pipeline_maps(items, key, mode=mode)
    assert read_map_record(batch[key]).modes == (mode, mode)
    loss = get_loss(name, **kwargs)
    assert torch.equal(loss(x, y, **{key: batch[key]}), loss(x, y, **{key: batch[key].as_tensor()}))


def test_a_map_at_another_spacing_than_the_loss_was_given_raises():
    x, items = labelled_batch()
    y = torch.stack(items)
    voxel_units = pipeline_maps(items, mode="signed")["dist"]  # plain labels: spacing 1
    with pytest.raises(ValueError, match=r"spacing=\(1.5, 0.7\) mm.*item 0.*\(1.0, 1.0\)"):
        BoundaryLoss(softmax=True, spacing=(1.5, 0.7))(x, y, dist=voxel_units)
    in_mm = pipeline_maps(items, mode="signed", spacing=(1.5, 0.7))["dist"]
    assert torch.isfinite(BoundaryLoss(softmax=True, spacing=(1.5, 0.7))(x, y, dist=in_mm))
    assert torch.isfinite(BoundaryLoss(softmax=True)(x, y, dist=in_mm))  # no spacing given: the map's own


def test_hausdorff_dt_measures_the_prediction_at_the_spacing_its_map_records():
    # both distances of the loss must be in the same units: d_g in mm from the map, d_p at the map's spacing
    spacing = (2.0, 0.5)
    affine = torch.diag(torch.tensor([*spacing, 1.0, 1.0], dtype=torch.float64))
    x, items = labelled_batch(affine=affine)
    y = torch.stack([item.as_tensor() for item in items])
    dist = pipeline_maps(items, mode="unsigned")["dist"]  # spacing from the labels' affine
    assert torch.equal(read_map_record(dist).spacings, torch.tensor([spacing, spacing], dtype=torch.float64))
    from_record = HausdorffDTLoss(softmax=True)(x, y, dist=dist)
    given = HausdorffDTLoss(softmax=True, spacing=spacing)  # the spacing path, tested against scipy
    assert torch.allclose(from_record, given(x, y, dist=dist.as_tensor()), rtol=1e-12)
    assert torch.allclose(from_record, given(x, y), rtol=1e-6)  # and the on-the-fly target map
    assert not torch.allclose(from_record, HausdorffDTLoss(softmax=True)(x, y, dist=dist.as_tensor()))


def test_boundary_aware_refuses_a_map_with_other_bins():
    x, items = labelled_batch()
    y = torch.stack(items)
    logits = torch.randn(2, 3 * 5, *x.shape[2:], dtype=torch.float64)
    three_bins = pipeline_maps(items, mode="quantized", bins=3, truncation=3.0)["dist"]  # values 0..3: in range
    loss = get_loss("boundary_aware")
    assert torch.isfinite(loss(logits, y, dist=three_bins.as_tensor()))
    with pytest.raises(ValueError, match=r"bins=5, truncation=5.0.*bins=3, truncation=3.0"):
        loss(logits, y, dist=three_bins)
    with pytest.raises(ValueError, match="mode 'quantized'"):
        loss(logits, y, dist=pipeline_maps(items, mode="unsigned")["dist"])
    five_bins = pipeline_maps(items, mode="quantized")["dist"]
    assert torch.equal(loss(logits, y, dist=five_bins), loss(logits, y))


def test_compound_terms_cannot_share_a_map_of_one_mode():
    x, items = labelled_batch()
    y = torch.stack(items)
    kwargs = {"boundary": {"softmax": True}, "region_wise": {"softmax": True}}
    compound = CompoundLoss({"boundary": 0.5, "region_wise": 0.5}, loss_kwargs=kwargs)
    rrw = pipeline_maps(items, mode="rrw")["dist"]
    with pytest.raises(ValueError, match=r"BoundaryLoss reads the 'dist' map of DistanceMapd mode 'signed'.*'rrw'"):
        compound(x, y, dist=rrw)
    with pytest.raises(ValueError, match=r"boundary read mode 'signed'; region_wise read mode 'rrw'"):
        BatchAuxLoss(compound)  # refused before any data is loaded
    BatchAuxLoss(CompoundLoss({"boundary": 0.5, "active_boundary": 0.5}))  # one mode: one map serves both


# ------------------------------------------------------------------------------------------ conditional boundary
def anchored_case():
    """Labels with one vertical boundary at column 3 of 12 columns, logits and features (1, 4, 6, 12)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(1, 1, 6, 12, dtype=torch.long)
    labels[..., 3:] = 1
    return torch.randn(1, 2, 6, 12, generator=g), labels, torch.randn(1, 4, 6, 12, generator=g)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_conditional_boundary_refuses_non_finite_logits_outside_every_anchor_window(bad):
    logits, labels, features = anchored_case()
    loss = ConditionalBoundaryLoss(kernel_size=3)
    assert torch.isfinite(loss(logits, labels, features=features))
    logits[0, 1, 0, 11] = bad  # far from the boundary band: the loss itself stays finite
    with pytest.raises(ValueError, match="input logits contain"):
        loss(logits, labels, features=features)


def test_conditional_boundary_without_features_says_how_to_supply_them():
    logits, labels, _ = anchored_case()
    with pytest.raises(ValueError, match=r"decoder features.*FeatureHook"):
        ConditionalBoundaryLoss()(logits, labels)


def test_dpce_refuses_a_map_made_in_another_mode_and_reads_its_own():
    x, items = labelled_batch(affine=torch.eye(4, dtype=torch.float64))
    y = torch.stack([item.as_tensor() for item in items])
    loss = get_loss("dpce")
    with pytest.raises(ValueError, match=r"DistancePenalizedCELoss.*'penalty'.*'unsigned'|'unsigned'.*'penalty'"):
        loss(x, y, dist=pipeline_maps(items, mode="unsigned")["dist"])
    right = pipeline_maps(items, mode="penalty")["dist"]
    value = loss(x, y, dist=right)
    assert type(value) is torch.Tensor and torch.equal(value, loss(x, y, dist=right.as_tensor()))
