"""The ``medseg`` command line: names are names, short errors (exit 2 refused, 1 failed), no C++ abort, quiet logs."""

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import medseg.bundles
from medseg.cli import main
from medseg.console import UserError, console, error_message, report_error
from medseg.data.synthetic import make_synapse

#: synapse_unet3d at test size: CPU-size network and patches, one validation, 2 epochs of 1 iteration.
TINY = ["--max-epochs", "2", "--override", "num_workers=0", "roi_size=[32,32,16]", "pixdim=[8.0,8.0,16.0]"]
TINY += ["network_def#channels=[4,8]", "network_def#strides=[2]", "network_def#num_res_units=0", "val_interval=2"]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_loss_name_never_resolves_outside_configs_losses(tmp_path, monkeypatch):
    overlays = tmp_path / "repo" / "configs" / "losses"
    overlays.mkdir(parents=True)
    (overlays / "mine.json").write_text('{"loss_name": "dice"}')
    (tmp_path / "evil.json").write_text('{"x": "$print(1)"}')  # what ../../../evil would have reached
    monkeypatch.setattr(medseg.bundles, "LOSS_OVERLAYS", overlays)
    monkeypatch.chdir(tmp_path / "repo")  # ../../../evil is written as a path: relative to here, and no file
    assert medseg.bundles.loss_overlay("mine") == overlays / "mine.json"
    for name in ("../../../evil", "..", "mine.json", "nosuch"):
        with pytest.raises(UserError):
            medseg.bundles.loss_overlay(name)
    assert medseg.bundles.loss_overlay(str(tmp_path / "evil.json")) == tmp_path / "evil.json"  # a path, given as one


def test_train_refuses_a_traversing_loss_name_before_writing(tmp_path, capsys):
    root = tmp_path / "run"
    assert main(["train", "synapse_unet3d", "--loss", "../../../x/evil", "--bundle-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no loss overlay file ../../../x/evil" in err and len(_lines(err)) == 2 and "hint:" in err
    assert not root.exists()


def test_demo_with_an_unknown_loss_stops_before_writing_data(tmp_path, capsys):
    assert main(["demo", "--loss", "nosuch", "--out", str(tmp_path / "demo")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(_lines(captured.err)) == 2
    assert "no loss overlay 'nosuch'" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "demo").exists()


def test_shapes_checks_every_loss_before_training_any(monkeypatch, capsys):
    import medseg.demo

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the losses were checked")

    monkeypatch.setattr(medseg.demo, "train_one", no_training)
    assert main(["shapes", "--losses", "dice", "boundary", "nosuch", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "boundary" in err and "nosuch" in err and len(_lines(err)) == 2


def test_user_errors_are_a_line_and_a_hint_and_debug_adds_the_traceback(capsys):
    assert main(["train", "no_such_bundle"]) == 2
    err = capsys.readouterr().err
    assert _lines(err)[0].startswith("medseg train: error: no bundle 'no_such_bundle'") and len(_lines(err)) == 2
    assert main(["--debug", "train", "no_such_bundle"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "UserError" in err
    assert main(["train", "synapse_unet3d", "--override", "max_epochs"]) == 2
    assert "--override takes id=value" in capsys.readouterr().err


def test_monai_config_errors_are_unwrapped_to_the_users_error():
    from monai.bundle import ConfigParser

    with pytest.raises(ValueError) as direct:
        int("abc")
    parser = ConfigParser({"size": "$int('abc')", "net": {"_target_": "torch.nn.Linear", "in_features": "@size"}})
    with pytest.raises(RuntimeError, match="Failed to") as wrapped:
        parser.get_parsed_content("net")
    assert error_message(wrapped.value) == str(direct.value)


def test_a_refusal_monai_wrapped_in_its_config_still_exits_2_with_its_hint(capsys):
    from monai.bundle import ConfigParser

    def refuse():
        raise UserError("the run folder is in use", hint="use another --bundle-root")

    parser = ConfigParser({"open": "$refuse()"}, globals={"refuse": refuse})
    with pytest.raises(RuntimeError, match="Failed to evaluate") as wrapped:
        parser.get_parsed_content("open")
    assert report_error(wrapped.value, "train") == 2
    err = capsys.readouterr().err
    assert "error: the run folder is in use" in err and "use another --bundle-root" in err


def test_a_failed_run_reports_the_users_error_in_a_line_and_exits_1(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["train", "synapse_unet3d", "--dataset-dir", str(tmp_path / "empty"), "--bundle-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "Failed to evaluate" not in err and "Traceback" not in err
    assert _lines(err)[-1] == "  hint: --debug shows the traceback" and len(_lines(err)) <= 3


def test_known_warnings_are_shown_once(capsys):
    with warnings.catch_warnings(), console():
        warnings.simplefilter("always")  # Python's own once-per-location rule does not hide the repeats here
        for config in ("train.json", "inference.json", "train.json"):
            warnings.warn(
                f'parsing config_file {config}: any `"_target_"` value in it is resolved to an importable '
                "callable and invoked",
                UserWarning,
                stacklevel=1,
            )
        for organ in (4, 8, 4):
            warnings.warn(
                f"the prediction of class {organ} is all 0, this may result in nan/inf distance.",
                UserWarning,
                stacklevel=1,
            )
        for _ in range(3):
            logging.getLogger("medseg.data.btcv").warning("BTCV folder lacks 22 of the 30 Synapse cases (case0004)")
            logging.getLogger("monai.bundle.workflows").info("MONAI's chatter, hidden without --verbose")
    err = capsys.readouterr().err
    assert err.count('any `"_target_"` value') == 1 and err.count("is all 0") == 1
    assert err.count("BTCV folder lacks") == 1 and "chatter" not in err and len(_lines(err)) == 3


@pytest.fixture(scope="module")
def bad_label_btcv(tmp_path_factory):
    """Synthetic BTCV whose first training case's label holds the value 40 (BTCV has 0..13)."""
    import nibabel as nib
    import numpy as np

    from medseg.data import btcv_datalist

    root = make_synapse(tmp_path_factory.mktemp("bad"), layout="btcv", cases=6, size=48, seed=0, datalist=True)
    label = Path(btcv_datalist(root, "train")[0]["label"])
    image = nib.load(label)
    values = np.asarray(image.dataobj).copy()
    values[0, 0, 0] = 40
    nib.save(nib.Nifti1Image(values, image.affine, image.header), label)
    return root, label


@pytest.mark.slow
def test_a_data_error_while_caching_with_workers_exits_1_without_a_cpp_abort(tmp_path, bad_label_btcv):
    root, label = bad_label_btcv
    command = [sys.executable, "-m", "medseg.cli", "train", "synapse_unet3d", "--dataset-dir", str(root)]
    command += ["--bundle-root", str(tmp_path / "run"), *TINY, "num_workers=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert "terminate called" not in result.stderr and result.returncode == 1, result.stderr[-2000:]
    assert f"label file {label} holds unknown values [40]" in result.stderr
    assert len(_lines(result.stderr.split("error:", 1)[1])) <= 2  # the error and the hint


@pytest.mark.slow
def test_training_prints_one_line_per_epoch_and_verbose_adds_iterations(tmp_path, capsys):
    data = make_synapse(tmp_path / "data", layout="btcv", cases=5, size=32, seed=0, datalist=True)
    assert (
        main(["train", "synapse_unet3d", "--dataset-dir", str(data), "--bundle-root", str(tmp_path / "a"), *TINY]) == 0
    )
    quiet = capsys.readouterr()
    epochs = [line for line in _lines(quiet.err) if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"] and "val_mean_dice" in epochs[1]
    assert "Iter:" not in quiet.err + quiet.out and "ignite" not in quiet.err + quiet.out
    assert (
        main(
            [
                "--verbose",
                "train",
                "synapse_unet3d",
                "--dataset-dir",
                str(data),
                "--bundle-root",
                str(tmp_path / "b"),
                *TINY,
            ]
        )
        == 0
    )
    verbose = capsys.readouterr()
    assert "Iter: 1/1" in verbose.err and "epoch 2/2" in verbose.err


@pytest.mark.parametrize(
    "bundle", sorted(p.parent.parent.name for p in medseg.bundles.BUNDLES.glob("*/configs/train.json"))
)
def test_every_bundle_logs_one_summary_line_per_epoch(bundle):
    import json

    handlers = json.loads((medseg.bundles.BUNDLES / bundle / "configs" / "train.json").read_text())["train"]["handlers"]
    assert [h for h in handlers if h.get("_target_") == "medseg.console.EpochSummary"], bundle
