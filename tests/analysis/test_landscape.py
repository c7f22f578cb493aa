"""The loss behaviour explorer: drifting predictions, values and gradients against hand formulas, outputs."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medseg.analysis import drift_sequence, explore, is_monotone
from medseg.analysis.landscape import main
from medseg.losses import LossInfo, list_losses

LOGIT = 4.0  # the explorer's default object logit L


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_overlaps_of_a_radius_one_disc_match_the_hand_count():
    # the radius-1 disc is the 5-pixel plus (centre and 4 arms). Shifted right by 1 it shares the centre and the
    # right arm: Dice 2·2/(5+5) = 0.4; by 2 only the target's right arm (the prediction's left arm): 2·1/10 = 0.2;
    # by 3 nothing. steps=4 spreads 0..2r+1 = 0..3 evenly: shifts 0, 1, 2, 3.
    sequence = drift_sequence("plus", radius=1, size=6, dims=2, steps=4)
    assert sequence.shifts == (0, 1, 2, 3)
    np.testing.assert_allclose(sequence.overlaps, [1.0, 0.4, 0.2, 0.0])
    assert sequence.labels.shape == (1, 1, 6, 6) and int(sequence.labels.sum()) == 5
    assert sequence.masks.flatten(1).sum(1).tolist() == [5, 5, 5, 5]  # every prediction has the target's area


def test_overlaps_of_a_radius_one_ball_match_the_hand_count():
    # the radius-1 ball is 7 voxels (centre and 6 face neighbours): shift 1 shares 2 (2·2/14), shift 2 shares 1
    sequence = drift_sequence("ball", radius=1, size=6, dims=3, steps=4)
    np.testing.assert_allclose(sequence.overlaps, [1.0, 4 / 14, 2 / 14, 0.0])
    assert int(sequence.labels.sum()) == 7


def test_drift_sequence_rejects_a_patch_too_small_for_the_shift():
    with pytest.raises(ValueError, match="cannot hold an object of radius 3"):
        drift_sequence("large", radius=3, size=13, dims=2)  # needs 2·(2·3 + 1) = 14
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        drift_sequence("large", radius=1, size=8, dims=4)


def test_explore_rejects_bad_arguments_with_a_clear_error():
    with pytest.raises(ValueError, match="logit must be positive"):
        explore(["dice"], size=12, radii=(2, 1), logit=0.0, progress=False)
    with pytest.raises(ValueError, match="soften must be a non-negative"):
        explore(["dice"], size=12, radii=(2, 1), soften=-1.0, progress=False)
    with pytest.raises(ValueError, match="unknown loss 'dise'"):
        explore(["dise"], size=12, radii=(2, 1), progress=False)


def test_is_monotone_allows_flat_stretches_and_rounding_but_not_a_fall():
    assert is_monotone([0.0, 1.0, 1.0, 2.0])
    assert is_monotone([1.0, 1.0 - 1e-12, 2.0])  # a fall of 5e-13 of the largest value: rounding
    assert not is_monotone([0.0, 2.0, 1.999])
    with pytest.raises(ValueError, match="at least 2 numbers"):
        is_monotone([1.0])


def test_dice_on_a_large_object_is_monotone():
    result = explore(["dice"], size=40, steps=8, radii=(8, 2), progress=False)
    large = result.curves[result.curves.object == "large"]
    sequence = drift_sequence("large", radius=8, size=40, dims=2, steps=8)
    target = sequence.labels[0, 0].numpy().astype(float)
    # MONAI's Dice loss re-computed: softmax of (0, ±L) gives the object σ(±L); per class (background, object)
    # 1 − (2Σpg + 1e-5)/(Σp + Σg + 1e-5), then the class mean
    expected, overlaps = [], []
    for mask in sequence.masks.numpy():
        p_object = np.where(mask, sigmoid(LOGIT), sigmoid(-LOGIT))
        pairs = ((1 - p_object, 1 - target), (p_object, target))
        expected.append(np.mean([1 - (2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5) for p, g in pairs]))
        overlaps.append(2 * (mask * target).sum() / (mask.sum() + target.sum()))
    np.testing.assert_allclose(large.value, expected, rtol=1e-9)
    np.testing.assert_allclose(large.overlap, overlaps)
    assert overlaps[0] == 1.0 and overlaps[-1] == 0.0
    assert np.all(np.diff(expected) > 0)  # the fact: Dice rises strictly as the large object's overlap falls
    assert result.summary.set_index("loss").loc["dice", "monotone_large"]


def test_cross_entropy_value_and_gradient_norm_match_the_closed_form():
    result = explore(["ce"], size=24, steps=5, radii=(4, 1), progress=False)
    for name, radius in (("large", 4), ("small", 1)):
        curve = result.curves[result.curves.object == name]
        sequence = drift_sequence(name, radius=radius, size=24, dims=2, steps=5)
        target = sequence.labels[0, 0].numpy().astype(bool)
        voxels = target.size
        for mask, value, grad_norm in zip(sequence.masks.numpy(), curve.value, curve.grad_norm, strict=True):
            wrong = int((mask ^ target).sum())
            right = voxels - wrong
            # mean CE: a right voxel costs −log σ(L) = log(1 + e^−L), a wrong one log(1 + e^L). Its gradient on the
            # logits is (softmax − onehot)/N: ±σ(−L)/N on both channels of a right voxel, ±σ(L)/N of a wrong one
            expected_value = (right * math.log1p(math.exp(-LOGIT)) + wrong * math.log1p(math.exp(LOGIT))) / voxels
            expected_norm = math.sqrt(2 * (right * sigmoid(-LOGIT) ** 2 + wrong * sigmoid(LOGIT) ** 2)) / voxels
            assert value == pytest.approx(expected_value, rel=1e-9)
            assert grad_norm == pytest.approx(expected_norm, rel=1e-9)


class Raising(nn.Module):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken on purpose")


class NotFinite(nn.Module):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return input.sum() * float("nan")


class ReadsFeatures(nn.Module):
    aux_keys = ("features",)


class NeedsCheckpoint(nn.Module):
    def __init__(self, checkpoint: str) -> None:
        super().__init__()


def test_losses_that_cannot_run_are_reported_not_fatal():
    entries = [
        LossInfo("raising", Raising, "extra", "test", ()),
        LossInfo("not_finite", NotFinite, "extra", "test", ()),
        LossInfo("reads_features", ReadsFeatures, "extra", "test", ("features",)),
        LossInfo("needs_checkpoint", NeedsCheckpoint, "extra", "test", ()),
        "dice",
    ]
    result = explore(entries, size=12, steps=3, radii=(2, 1), progress=False)
    summary = result.summary.set_index("loss")
    assert summary.status.to_dict() == {
        "raising": "failed",
        "not_finite": "failed",
        "reads_features": "skipped",
        "needs_checkpoint": "skipped",
        "dice": "ok",
    }
    assert summary.note["raising"] == ("large: RuntimeError: broken on purpose; small: RuntimeError: broken on purpose")
    assert "FloatingPointError" in summary.note["not_finite"]
    assert "'features'" in summary.note["reads_features"]
    assert "'checkpoint'" in summary.note["needs_checkpoint"]
    assert summary.monotone_large["raising"] is None and summary.note["dice"] == ""
    assert set(result.curves.loss) == {"dice"}


def test_command_line_writes_tables_and_small_readable_plots(tmp_path, capsys):
    losses = ["dice", "ce", "boundary"]
    options = ["--size", "24", "--steps", "5", "--threads", str(torch.get_num_threads()), "--quiet"]
    assert main(["--losses", *losses, "--out", str(tmp_path), *options]) == 0
    names = ["curves.csv", "summary.csv", "summary.md", "loss_values.png", "loss_gradients.png"]
    for name in [*names, "loss_values_grid.png"]:
        assert (tmp_path / name).is_file(), name
    for name in ("loss_values.png", "loss_gradients.png", "loss_values_grid.png"):
        assert (tmp_path / name).stat().st_size < 150_000
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    markdown = (tmp_path / "summary.md").read_text()
    assert markdown.startswith("| loss") and all(f"| {loss} " in markdown for loss in losses)
    assert "| dice " in capsys.readouterr().out


def test_three_dimensional_balls():
    result = explore(["dice", "boundary"], size=10, dims=3, steps=3, radii=(2, 1), progress=False)
    assert (result.summary.status == "ok").all()
    for _, curve in result.curves.groupby(["loss", "object"]):
        assert curve.overlap.iloc[0] == 1.0 and curve.overlap.iloc[-1] == 0.0
        assert np.isfinite(curve.value).all() and (curve.grad_norm > 0).all()


@pytest.mark.slow
def test_every_registered_loss_runs_or_is_skipped_for_a_stated_reason():
    result = explore(size=16, steps=3, radii=(3, 1), progress=False)
    summary = result.summary.set_index("loss")
    assert set(summary.index) == {info.name for info in list_losses()}
    failed = summary[summary.status == "failed"]
    assert failed.empty, f"losses that raise on a plain two-class prediction: {failed.note.to_dict()}"
    skipped = summary[summary.status == "skipped"]
    assert (skipped.note != "").all()
    evaluated = summary[summary.status == "ok"]
    assert evaluated[["monotone_large", "monotone_small"]].notna().all().all()
    assert set(result.curves.loss) == set(evaluated.index)
    assert np.isfinite(result.curves[["value", "grad_norm"]].to_numpy()).all()
