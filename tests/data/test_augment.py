"""NnUNetAugmentd: one geometry for images, labels and distance maps; gamma on images only; config-built."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from medseg.data import NnUNetAugmentd

NO_SPATIAL = {"prob_rotation": 0.0, "prob_scale": 0.0, "prob_elastic": 0.0}
NO_INTENSITY = {"prob_gamma": 0.0, "prob_inverted_gamma": 0.0}


def sample(shape: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """Blocky labels 0..3, an image and a distance-like map that are functions of the label."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, size=tuple(max(1, s // 4) for s in shape))
    label = np.kron(coarse, np.ones([4] * len(shape)))[tuple(slice(0, s) for s in shape)][None]
    return {
        "image": torch.as_tensor(label * 10 + 5, dtype=torch.float32),
        "label": torch.as_tensor(label, dtype=torch.float32),
        "dist": torch.as_tensor(label + 100, dtype=torch.float32),
    }


def build(**kwargs) -> NnUNetAugmentd:
    return NnUNetAugmentd(image_keys="image", label_keys="label", distance_keys="dist", **kwargs)


@pytest.mark.parametrize("shape", [(24, 20), (16, 16, 12)], ids=["2d", "3d"])
def test_every_key_follows_the_same_geometry(shape):
    data = sample(shape)
    augment = build(prob_rotation=1.0, prob_scale=1.0, prob_elastic=1.0, elastic_alpha=(50.0, 60.0),
                    image_order=0, label_order=0, distance_order=0, **NO_INTENSITY)  # fmt: skip
    augment.set_random_state(1)
    out = augment(data)
    image, label, dist = (out[k].numpy() for k in ("image", "label", "dist"))
    assert image.shape == label.shape == dist.shape == (1, *shape)
    assert not np.array_equal(label, data["label"].numpy()), "the geometry changed"
    inside = image != 0  # zero only where the image was padded from outside its field of view
    assert inside.mean() > 0.3
    np.testing.assert_array_equal(image[inside], label[inside] * 10 + 5)
    np.testing.assert_array_equal(dist[inside], label[inside] + 100)
    assert (label[~inside] == 0).all()


def test_mirroring_flips_every_key_along_the_chosen_axes():
    data = sample((8, 12, 6), seed=2)
    out = build(prob_mirror=1.0, **NO_SPATIAL, **NO_INTENSITY)(data)
    for key in data:
        np.testing.assert_array_equal(out[key].numpy(), np.flip(data[key].numpy(), axis=(1, 2, 3)))
    out = build(prob_mirror=1.0, mirror_axes=[1], **NO_SPATIAL, **NO_INTENSITY)(data)
    np.testing.assert_array_equal(out["label"].numpy(), np.flip(data["label"].numpy(), axis=2))


@pytest.mark.parametrize("inverted", [False, True])
def test_gamma_changes_images_only_and_keeps_their_mean_and_std(inverted):
    rng = np.random.default_rng(0)
    data = sample((20, 20), seed=3)
    data["image"] = torch.as_tensor(rng.random((1, 20, 20)), dtype=torch.float32)
    gamma = {"prob_gamma": float(not inverted), "prob_inverted_gamma": float(inverted)}
    augment = build(gamma_range=(0.5, 0.6), prob_mirror=0.0, **NO_SPATIAL, **gamma)
    out = augment(data)
    before, after = data["image"].numpy().ravel(), out["image"].numpy().ravel()
    assert not np.allclose(before, after)
    assert after.mean() == pytest.approx(before.mean(), abs=1e-5)
    assert after.std() == pytest.approx(before.std(), rel=1e-4)
    # x -> x^gamma is increasing, so the order of the values survives (reversed twice when inverted)
    np.testing.assert_array_equal(np.argsort(after, kind="stable"), np.argsort(before, kind="stable"))
    for key in ("label", "dist"):
        np.testing.assert_array_equal(out[key].numpy(), data[key].numpy())


def test_labels_keep_their_values_with_linear_label_interpolation():
    data = sample((16, 16, 16), seed=4)
    augment = build(prob_rotation=1.0, prob_scale=1.0, prob_elastic=1.0, label_order=1)
    augment.set_random_state(0)
    values = set(torch.unique(augment(data)["label"]).tolist())
    assert values <= {0.0, 1.0, 2.0, 3.0}


def test_distance_maps_are_padded_from_their_edge_and_images_with_zero():
    data = {"image": torch.full((1, 16, 16), 7.0), "label": torch.ones(1, 16, 16), "dist": torch.full((1, 16, 16), 7.0)}
    augment = build(prob_scale=1.0, scale_range=(1.3, 1.3), prob_rotation=0.0, prob_elastic=0.0, **NO_INTENSITY)
    out = augment(data)  # scale 1.3 samples a larger region: the border comes from outside the image
    assert (out["image"] == 0).any() and (out["label"] == 0).any()
    assert torch.equal(out["dist"], data["dist"])


def test_seeded_results_repeat_and_numpy_global_state_is_untouched():
    data = sample((16, 16), seed=5)
    np.random.seed(123)  # noqa: NPY002 (the global state batchgenerators uses)
    state = np.random.get_state()  # noqa: NPY002
    first = build(prob_rotation=1.0, prob_elastic=1.0, prob_gamma=1.0).set_random_state(7)(data)
    second = build(prob_rotation=1.0, prob_elastic=1.0, prob_gamma=1.0).set_random_state(7)(data)
    for key in data:
        assert torch.equal(first[key], second[key])
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


def test_types_and_metadata_are_kept():
    data = sample((8, 8))
    data["image"] = MetaTensor(data["image"], meta={"filename_or_obj": "case0001.nii.gz"})
    out = build(prob_mirror=1.0, **NO_SPATIAL, **NO_INTENSITY)(data)
    assert isinstance(out["image"], MetaTensor) and out["image"].meta["filename_or_obj"] == "case0001.nii.gz"
    assert type(out["label"]) is torch.Tensor and out["label"].dtype == torch.float32


def test_usable_from_a_bundle_config():
    config = {
        "augment": {
            "_target_": "medseg.data.NnUNetAugmentd",
            "image_keys": ["image"],
            "label_keys": ["label"],
            "distance_keys": ["dist"],
            "prob_rotation": 1.0,
        }
    }
    augment = ConfigParser(config).get_parsed_content("augment")
    assert isinstance(augment, NnUNetAugmentd)
    assert augment(sample((12, 12)))["label"].shape == (1, 12, 12)


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="at least one image key"):
        NnUNetAugmentd(image_keys=[])
    with pytest.raises(ValueError, match="listed twice"):
        NnUNetAugmentd(image_keys="image", label_keys="image")
    with pytest.raises(ValueError, match="prob_gamma must be in"):
        NnUNetAugmentd(image_keys="image", prob_gamma=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        NnUNetAugmentd(image_keys="image", scale_range=(1.2, 0.8))
    data = sample((8, 8))
    data["label"] = torch.zeros(1, 8, 9)
    with pytest.raises(ValueError, match="one spatial shape"):
        build()(data)
    with pytest.raises(ValueError, match="mirror axis 3"):
        build(mirror_axes=[3])(sample((8, 8)))
