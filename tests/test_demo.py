"""The README's main job runs end to end: synthetic BTCV -> bundle training -> inference -> per-organ table."""

import math

import pytest

from medseg.bundles import DEMO_EPOCHS, demo
from medseg.cli import main
from medseg.data.synapse import DEFAULT_BTCV_TO_SYNAPSE, synapse_organ_names


def test_demo_trains_infers_and_scores_every_organ(tmp_path):
    table = demo(tmp_path / "demo", epochs=2, cases=4, size=32, iterations=2)
    assert list(table.index) == list(synapse_organ_names(DEFAULT_BTCV_TO_SYNAPSE).values())
    assert ((table["dice"] >= 0) & (table["dice"] <= 1)).all()
    assert all(math.isfinite(v) for v in table["hd95_mm"])
    assert (tmp_path / "demo" / "metrics.csv").is_file()
    assert len(list((tmp_path / "demo" / "predictions").glob("*_seg.nii.gz"))) == 2


def test_shapes_command_prints_one_row_per_loss(capsys):
    assert main(["shapes", "--losses", "dice", "focal", "--steps", "2"]) == 0
    captured = capsys.readouterr()
    assert "dice" in captured.out and "focal" in captured.out and "dice_square" in captured.out
    assert captured.err.count("\n") <= 1  # one progress bar, updated in place


def test_shapes_demo_builds_every_logits_only_loss_and_names_the_others():
    import pytest

    from medseg.demo import build_demo_loss
    from medseg.losses import list_losses

    for info in list_losses():
        if info.aux_keys:
            with pytest.raises(ValueError, match="try it with a bundle"):
                build_demo_loss(info.name)
        elif info.name != "inverse_form":
            assert build_demo_loss(info.name) is not None


@pytest.mark.slow
def test_demo_output_fits_on_one_screen(tmp_path, capsys):
    """The README's `medseg demo`, as a user runs it: everything it prints (stdout and stderr) in <= 40 lines."""
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert printed.count("\n") <= 40, printed
    assert "test cases, mean per organ" in captured.out and "Traceback" not in printed
    epochs = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == DEMO_EPOCHS  # one summary line per epoch
