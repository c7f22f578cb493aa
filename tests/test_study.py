"""The loss-comparison study runner on a 2 × 2 grid of tiny synapse_unet3d runs on synthetic BTCV."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medseg import study
from medseg.data.synthetic import make_synapse

#: A tiny run takes a few seconds on one core: 1 epoch of a 3-level UNet on 16³ patches of 12 × 12 × 24 mm voxels.
TINY = {
    "max_epochs": 1,
    "val_interval": 1,
    "num_workers": 0,
    "batch_size": 1,
    "num_samples": 1,
    "roi_size": [16, 16, 16],
    "pixdim": [12.0, 12.0, 24.0],
    "network_def#channels": [4, 8, 16],
    "network_def#strides": [2, 2],
    "network_def#num_res_units": 0,
}
GAMMA_1 = {"loss_kwargs#focal#gamma": 1.0}
TVERSKY_HALF = {"loss_kwargs#tversky#alpha": 0.5, "loss_kwargs#tversky#beta": 0.5}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Raw BTCV layout, 2 training, 1 validation and 2 test cases."""
    return make_synapse(tmp_path_factory.mktemp("btcv"), layout="btcv", cases=5, size=32, seed=0, datalist=True)


def two_by_two(dataset: Path) -> study.Grid:
    """2 losses × 2 hyperparameter settings (the overlay's own and one override), one seed."""
    return study.Grid(
        bundles=["synapse_unet3d"],
        losses=["focal", "tversky"],
        seeds=[0],
        settings={"focal": [{}, GAMMA_1], "tversky": [{}, TVERSKY_HALF]},
        overrides={"synapse_unet3d": TINY},
        datasets={"synapse_unet3d": dataset},
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dataset) -> tuple[Path, study.Grid, pd.DataFrame]:
    """The 2 × 2 grid run once through the command line's code path (tables and plots too)."""
    out = tmp_path_factory.mktemp("study")
    grid = two_by_two(dataset)
    plan = study.run_grid(grid, out)
    assert list(plan.action) == ["run"] * 4
    metrics = study.collect(out)
    main_settings = {loss: grid.main_setting(loss) for loss in grid.losses}
    study.write_tables(metrics, study.survey_tables(metrics, main_settings), out / "tables")
    study.plot_all(out, grid, metrics)
    return out, grid, metrics


def test_each_run_has_its_own_folder_with_done_json_curves_and_test_metrics(finished):
    out, grid, _ = finished
    folders = [spec.folder(out) for spec in grid.runs()]
    assert len(set(folders)) == 4
    names = {f.relative_to(out / "runs" / "synapse_unet3d").as_posix() for f in folders}
    expected = {"focal/default/seed0", "focal/gamma=1.0/seed0", "tversky/default/seed0"}
    assert names == expected | {"tversky/alpha=0.5,beta=0.5/seed0"}
    for folder in folders:
        done = json.loads((folder / "done.json").read_text())
        assert (folder / "models" / "model.pt").is_file()
        curves = pd.read_csv(folder / "curves.csv")
        # TINY: 1 epoch of 2 training cases with batch size 1 → 2 logged iterations and 1 validation
        assert sorted(curves[curves.tag == "train_loss"].step) == [1, 2]
        assert curves[curves.tag == "val_mean_dice"].value.tolist() == pytest.approx([done["val_mean_dice"]])
        scores = pd.read_csv(folder / "test_metrics.csv")
        assert len(scores) == 2 * 8  # 2 test cases × 8 Synapse organs
        assert done["test"]["dice"] == pytest.approx(scores.dice.mean())


def test_hyperparameter_setting_reaches_the_loss(finished):
    out, grid, _ = finished
    focal_gamma_1 = next(s for s in grid.runs() if s.setting_name == "gamma=1.0")
    done = json.loads((focal_gamma_1.folder(out) / "done.json").read_text())
    assert done["setting_overrides"] == GAMMA_1
    default, changed = (
        pd.read_csv(s.folder(out) / "curves.csv").query("tag == 'train_loss'").value.iloc[0]
        for s in grid.runs()
        if s.loss == "focal"
    )
    assert default != pytest.approx(changed, rel=1e-6)  # same seed and batches, different γ: a different loss


def test_collected_table_and_survey_tables_match_a_plain_recomputation(finished):
    out, grid, metrics = finished
    test = metrics[metrics.split == "test"]
    assert len(test) == 4 * 2 * 8 and (metrics.split == "validation").sum() == 4
    tables_dir = out / "tables"
    table3 = pd.read_csv(tables_dir / "table3_synapse.csv", index_col=[0, 1])
    for loss in grid.losses:
        rows = pd.read_csv(grid.runs()[0].folder(out).parents[2] / loss / "default" / "seed0" / "test_metrics.csv")
        case_means = [np.mean(rows.dice[rows.case == case]) for case in sorted(set(rows.case))]
        assert table3.loc[("UNet 3D", loss), "DSC"] == pytest.approx(100 * np.mean(case_means))
        liver = rows[rows.structure == "liver"]
        assert table3.loc[("UNet 3D", loss), "liver HD95"] == pytest.approx(liver.hd95.mean())
    table5 = pd.read_csv(tables_dir / "table5_hyperparameters.csv", index_col=[0, 1, 2])
    assert len(table5) == 4
    gamma_1 = pd.read_csv(out / "runs" / "synapse_unet3d" / "focal" / "gamma=1.0" / "seed0" / "test_metrics.csv")
    assert table5.loc[("UNet 3D", "focal", "gamma=1.0"), "DSC"] == pytest.approx(100 * gamma_1.dice.mean())
    assert table5.loc[("UNet 3D", "focal", "gamma=1.0"), "DSC std"] == 0.0  # one seed
    markdown = (tables_dir / "table3_synapse.md").read_text().splitlines()
    assert markdown[0].startswith("| network") and len(markdown) == 2 + 2  # header, rule, one row per loss


def test_plots_are_png_images(finished):
    out, _, _ = finished
    names = ("curves_synapse_unet3d.png", "overlays_synapse_unet3d.png", "dice_boxes_synapse_unet3d.png")
    for name in names:
        with Image.open(out / "plots" / name) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_second_invocation_skips_finished_runs(finished, dataset):
    out, grid, _ = finished
    stamps = {s: (s.folder(out) / "done.json").stat().st_mtime_ns for s in grid.runs()}
    plan = study.run_grid(two_by_two(dataset), out)
    assert list(plan.action) == ["skip"] * 4
    assert {s: (s.folder(out) / "done.json").stat().st_mtime_ns for s in grid.runs()} == stamps


def test_interrupted_run_is_redone_from_scratch(tmp_path, dataset, monkeypatch):
    grid = dataclasses.replace(two_by_two(dataset), losses=["focal"], settings={"focal": [GAMMA_1]})
    folder = grid.runs()[0].folder(tmp_path)
    adapter = study.ADAPTERS["synapse_unet3d"]

    def killed(*args):
        raise KeyboardInterrupt  # the user stops the study after training, before scoring

    monkeypatch.setitem(study.ADAPTERS, "synapse_unet3d", dataclasses.replace(adapter, score=killed))
    with pytest.raises(KeyboardInterrupt):
        study.run_grid(grid, tmp_path)
    assert (folder / "models" / "model.pt").is_file() and not (folder / "done.json").exists()
    assert study.run_grid(grid, tmp_path, dry_run=True).action.tolist() == ["redo"]

    stale = folder / "models" / "stale.pt"
    stale.write_bytes(b"from the interrupted run")
    monkeypatch.setitem(study.ADAPTERS, "synapse_unet3d", adapter)
    assert study.run_grid(grid, tmp_path).action.tolist() == ["redo"]
    assert (folder / "done.json").is_file() and not stale.exists()  # deleted and rerun, not resumed
    assert study.run_grid(grid, tmp_path).action.tolist() == ["skip"]


def test_dry_run_lists_the_grid_and_writes_nothing(tmp_path, dataset, capsys):
    argv = ["--out", str(tmp_path / "s"), "--losses", "dice", "tversky", "--seeds", "0", "1", "--dry-run"]
    argv += ["--setting", "tversky:loss_kwargs#tversky#alpha=0.5;loss_kwargs#tversky#beta=0.5"]
    assert study.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    # dice × {0, 1} + tversky × {default, alpha=0.5,beta=0.5} × {0, 1}: a header and 6 runs, all to do
    assert len(lines) == 1 + 6 and all(" todo " in line for line in lines[1:])
    assert sum("tversky/alpha=0.5,beta=0.5/seed" in line for line in lines) == 2
    assert not (tmp_path / "s").exists()


def test_bad_grid_is_a_clear_error(dataset):
    with pytest.raises(ValueError, match="no study adapter for bundle"):
        dataclasses.replace(two_by_two(dataset), bundles=["nope"]).runs()
    with pytest.raises(ValueError, match=r"settings given for loss\(es\) \['dice'\]"):
        dataclasses.replace(two_by_two(dataset), settings={"dice": [{}]}).runs()
    with pytest.raises(ValueError, match="focal has the same setting twice"):
        dataclasses.replace(two_by_two(dataset), settings={"focal": [GAMMA_1, GAMMA_1]}).runs()


def test_cityscapes_grid_fills_table4_with_the_mean_iou_of_its_predictions(tmp_path):
    from medseg.data.cityscapes import TRAIN_ID_TO_LABEL_ID

    tiny = {"max_epochs": 1, "val_interval": 1, "num_workers": 0, "batch_size": 3, "amp": False}
    tiny |= {"image_size": [16, 32], "roi_size": [16, 16], "network_def#channels": [4, 8, 16]}
    tiny |= {"network_def#strides": [2, 2], "network_def#num_res_units": 0}
    # 4 synthetic frames of 64 × 32: 3 train, 1 val (the scored split)
    grid = study.Grid(["cityscapes_2d"], ["dice_ce"], [0], overrides={"cityscapes_2d": tiny})
    grid.synthetic = {"cases": 4, "size": 64, "seed": 0}
    study.run_grid(grid, tmp_path)
    metrics = study.collect(tmp_path)
    study.write_tables(metrics, study.survey_tables(metrics), tmp_path / "tables")
    study.plot_all(tmp_path, grid, metrics)
    assert (tmp_path / "plots" / "overlays_cityscapes_2d.png").is_file()
    table4 = pd.read_csv(tmp_path / "tables" / "table4_cityscapes.csv", index_col=[0, 1])
    miou = table4.loc[("UNet 2D", "dice_ce"), "mIoU"]
    assert len(table4) == 1 and np.isfinite(miou)

    # the official rule by hand on the one val image: FP only where the reference is an evaluated class
    (pred_path,) = (grid.runs()[0].folder(tmp_path) / "predictions").glob("*_labelIds.png")
    (ref_path,) = (tmp_path / "data" / "cityscapes_2d" / "gtFine" / "val").glob("*/*_gtFine_labelIds.png")
    pred, ref = np.asarray(Image.open(pred_path)), np.asarray(Image.open(ref_path))
    evaluated = np.isin(ref, list(TRAIN_ID_TO_LABEL_ID.values()))
    ious = []
    for c in TRAIN_ID_TO_LABEL_ID.values():
        tp = np.sum((pred == c) & (ref == c))
        fn = np.sum((ref == c) & (pred != c))
        fp = np.sum((pred == c) & (ref != c) & evaluated)
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    assert miou == pytest.approx(100 * np.mean(ious))
