"""Property-test cases of the boundary losses (see _case.Case)."""

import tempfile
from pathlib import Path

import torch

from medseg.networks.inverseform import InverseTransformNet, save_inverse_transform_net
from medseg.transforms import distance_maps

from ._case import Case, penalty_map  # noqa: F401


def signed_map(onehot: torch.Tensor, labels: torch.Tensor) -> dict:
    """The boundary loss's map (DistanceMapd mode ``signed``), as the pipeline would cache it."""
    return {"dist": distance_maps(onehot, "signed")}


def rrw_map(onehot: torch.Tensor, labels: torch.Tensor) -> dict:
    """The region-wise loss's map (mode ``rrw``)."""
    return {"dist": distance_maps(onehot, "rrw")}


def unet_weight_map(onehot: torch.Tensor, labels: torch.Tensor) -> dict:
    """U-Net's weight map (mode ``unet_weight``)."""
    return {"weight": distance_maps(onehot, "unet_weight")}


def quantized_bins(onehot: torch.Tensor, labels: torch.Tensor) -> dict:
    """The boundary-aware loss's bins (mode ``quantized``) for K = 1: bin 1 inside each class, 0 outside."""
    return {"dist": distance_maps(onehot, "quantized", bins=1, truncation=1.0)}


def decoder_features(onehot: torch.Tensor, labels: torch.Tensor) -> dict:
    """Stand-in decoder features (B, C + 2, *spatial): the one-hot target plus fixed noise, so classes differ."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(onehot.shape[0], onehot.shape[1] + 2, *onehot.shape[2:], generator=generator)
    return {"features": torch.cat([onehot, torch.zeros_like(onehot[:, :2])], 1) + 0.5 * noise.to(onehot.dtype)}


# InverseForm needs a checkpoint file: a tiny, untrained inverse-transformation net (8x8 tiles) written at import
_INVERSEFORM_DIR = tempfile.TemporaryDirectory(prefix="medseg_inverseform_")
with torch.random.fork_rng():
    torch.manual_seed(0)
    INVERSEFORM_CHECKPOINT = save_inverse_transform_net(
        InverseTransformNet(tile_size=8, channels=(4, 8), hidden=8), Path(_INVERSEFORM_DIR.name) / "inverse_net.pt"
    )


BOUNDARY_CASES: dict[str, Case] = {
    "boundary": Case({"softmax": True}, aux=signed_map),
    "region_wise": Case({"softmax": True}, aux=rrw_map),
    # no map: exercises the on-the-fly path (the prediction's map is computed every call anyway)
    "hausdorff_dt": Case({"softmax": True}),
    "hausdorff_er": Case({"softmax": True}),
    # 1 % of a 4x4 to 8x8 patch is less than one voxel: no boundary at all. Not minimal at a perfect prediction by
    # definition: voxels of the dilated boundary band inside a uniform region see the same KL (0) towards every
    # neighbour, so their direction CE is ln 8 whatever the segmentation (weighted by their distance to the boundary);
    # test_boundary.py::test_active_boundary_perfect_prediction_is_not_its_minimum shows a lower-scoring prediction.
    # No gradcheck: the neighbours' predictions are detached (the authors' stop-gradient), so autograd's gradient is
    # not the loss's finite difference; test_boundary.py gradchecks detach_neighbours=False on a non-trivial batch.
    "active_boundary": Case({"max_boundary_ratio": 0.25}, aux=signed_map, perfect_is_min=False, gradcheck=False),
    "boundary_dou": Case({"softmax": True}),
    # no map: exercises the on-the-fly path
    "shape_aware": Case({}),
    "unet_weighted_ce": Case({}, aux=unet_weight_map),
    # K bin channels per class, but the property batches have one channel per class: K = 1 (the bin is the class
    # mask); test_boundary_networks.py covers K > 1 and the decoder
    "boundary_aware": Case({"num_bins": 1, "truncation": 1.0}, aux=quantized_bins),
    "inverse_form": Case({"checkpoint": str(INVERSEFORM_CHECKPOINT), "softmax": True}),
    # Not minimal at a perfect prediction by definition: its feature terms depend on the logits only through which
    # neighbours are sampled (the correctly classified ones), and for fixed features a perfect prediction samples
    # every neighbour, so it can score higher than a wrong one.
    "conditional_boundary": Case({}, aux=decoder_features, perfect_is_min=False),
}
