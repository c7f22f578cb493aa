"""The loss-comparison study runner on a 2 × 2 grid of tiny synapse_unet3d runs on synthetic BTCV; overlay names,
the protocol, stale runs, the tables' statistics and the plots' keys without training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medseg import study
from medseg.data import btcv_datalist
from medseg.data.synthetic import make_synapse
from tests._sizes import TINY_UNET3D

#: A tiny run takes a few seconds on one core: 1 epoch of a 3-level UNet on 16³ patches of 12 × 12 × 24 mm voxels.
TINY = TINY_UNET3D
GAMMA_1 = {"loss_kwargs#focal#gamma": 1.0}
TVERSKY_HALF = {"loss_kwargs#tversky#alpha": 0.5, "loss_kwargs#tversky#beta": 0.5}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Raw BTCV layout, 2 training, 1 validation and 2 test cases."""
    return make_synapse(tmp_path_factory.mktemp("btcv"), layout="btcv", cases=5, size=32, seed=0, datalist=True)


def two_by_two(dataset: Path) -> study.Grid:
    """2 losses × 2 hyperparameter settings (the overlay's own and one override), one seed, each loss with CE."""
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
    study.write_tables(metrics, study.survey_tables(metrics, grid.main_settings()), out / "tables")
    study.plot_all(out, grid, metrics)
    return out, grid, metrics


def test_each_run_has_its_own_folder_with_done_json_curves_and_test_metrics(finished, dataset):
    out, grid, _ = finished
    folders = [spec.folder(out) for spec in grid.runs()]
    assert len(set(folders)) == 4
    names = {f.relative_to(out / "runs" / "synapse_unet3d").as_posix() for f in folders}
    expected = {"ce+focal/default/seed0", "ce+focal/gamma=1.0/seed0", "ce+tversky/default/seed0"}
    assert names == expected | {"ce+tversky/alpha=0.5,beta=0.5/seed0"}
    for folder in folders:
        done = json.loads((folder / "done.json").read_text())
        loss = folder.parts[-3].removeprefix("ce+")
        assert done["loss_weights"] == {"ce": 0.5, loss: 0.5} and done["optimises"] == f"0.5·ce + 0.5·{loss}"
        assert (folder / "models" / "model.pt").is_file()
        curves = pd.read_csv(folder / "curves.csv")
        # TINY: 1 epoch of the training cases (validation ones carved out) with batch size 1 → 1 iteration each
        training_cases = len(btcv_datalist(dataset, "train"))
        assert sorted(curves[curves.tag == "train_loss"].step) == list(range(1, training_cases + 1))
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
        if s.loss == "ce+focal"
    )
    assert default != pytest.approx(changed, rel=1e-6)  # same seed and batches, different γ: a different loss


def test_collected_table_and_survey_tables_match_a_plain_recomputation(finished):
    out, grid, metrics = finished
    test = metrics[metrics.split == "test"]
    assert len(test) == 4 * 2 * 8 and (metrics.split == "validation").sum() == 4
    tables_dir = out / "tables"
    table3 = pd.read_csv(tables_dir / "table3_synapse.csv", index_col=[0, 1])
    assert set(metrics.optimises) == {"0.5·ce + 0.5·focal", "0.5·ce + 0.5·tversky"}
    for loss in ("ce+focal", "ce+tversky"):
        rows = pd.read_csv(grid.runs()[0].folder(out).parents[2] / loss / "default" / "seed0" / "test_metrics.csv")
        case_means = [np.mean(rows.dice[rows.case == case]) for case in sorted(set(rows.case))]
        assert table3.loc[("UNet 3D", loss), "DSC"] == pytest.approx(100 * np.mean(case_means))
        assert table3.loc[("UNet 3D", loss), ["seeds", "cases"]].tolist() == [1, 2]
        assert np.isnan(table3.loc[("UNet 3D", loss), "DSC std"])  # one seed: no spread, not 0.0
        liver = rows[rows.structure == "liver"]
        assert table3.loc[("UNet 3D", loss), "liver HD95"] == pytest.approx(liver.hd95.mean())
    table5 = pd.read_csv(tables_dir / "table5_hyperparameters.csv", index_col=[0, 1, 2])
    assert len(table5) == 4
    gamma_1 = pd.read_csv(out / "runs" / "synapse_unet3d" / "ce+focal" / "gamma=1.0" / "seed0" / "test_metrics.csv")
    assert table5.loc[("UNet 3D", "ce+focal", "gamma=1.0"), "DSC"] == pytest.approx(100 * gamma_1.dice.mean())
    assert table5.loc[("UNet 3D", "ce+focal", "gamma=1.0"), "seeds"] == 1
    assert np.isnan(table5.loc[("UNet 3D", "ce+focal", "gamma=1.0"), "DSC std"])  # empty cell, not 0.0
    markdown = (tables_dir / "table3_synapse.md").read_text().splitlines()
    assert markdown[0].startswith("| network") and markdown[4] == ""  # header, rule, one row per loss, a note
    assert "ce+X` = 0.5·CE + 0.5·X" in markdown[5]
    assert all(" – " in row and "nan" not in row and " 0.00 " not in row.split("|")[6] for row in markdown[2:4])


def test_plots_are_png_images(finished):
    out, _, _ = finished
    names = ("curves_synapse_unet3d.png", "overlays_synapse_unet3d.png", "dice_boxes_synapse_unet3d.png")
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(names)
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
    # the protocol, then dice × {0, 1} + tversky × {default, alpha=0.5,beta=0.5} × {0, 1}: a header and 6 runs
    assert lines[0] == "protocol with-ce: dice → ce+dice, tversky → ce+tversky"
    assert len(lines) == 2 + 6 and all(" todo " in line for line in lines[2:])
    assert sum("ce+tversky/alpha=0.5,beta=0.5/seed" in line for line in lines) == 2
    assert sum("0.5·ce + 0.5·dice" in line for line in lines) == 2
    assert not (tmp_path / "s").exists()

    assert study.main([*argv, "--protocol", "alone"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "protocol alone: dice → dice, tversky → tversky"
    assert sum("/runs/synapse_unet3d/tversky/alpha=0.5,beta=0.5/seed" in line for line in lines) == 2
    assert not any("ce+" in line or "0.5·ce" in line for line in lines)


def test_bad_grid_is_a_clear_error(dataset):
    with pytest.raises(ValueError, match="no study adapter for bundle"):
        dataclasses.replace(two_by_two(dataset), bundles=["nope"]).runs()
    with pytest.raises(ValueError, match=r"settings given for loss\(es\) \['dice'\]"):
        dataclasses.replace(two_by_two(dataset), settings={"dice": [{}]}).runs()
    with pytest.raises(ValueError, match=r"losses \['dice', 'ce\+dice'\] all train ce\+dice under --protocol with-ce"):
        dataclasses.replace(two_by_two(dataset), losses=["dice", "ce+dice"], settings={}).runs()
    with pytest.raises(ValueError, match="unknown protocol 'both'"):
        dataclasses.replace(two_by_two(dataset), protocol="both").runs()
    with pytest.raises(ValueError, match=r"no loss overlay 'ce\+dcie'"):
        dataclasses.replace(two_by_two(dataset), losses=["ce+dcie"], settings={}).runs()
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
    names = ["curves_cityscapes_2d.png", "iou_boxes_cityscapes_2d.png", "overlays_cityscapes_2d.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names
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


# --- names say what was optimised (no training) ------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ROOT / "configs" / "losses"


def test_every_overlay_name_says_what_it_optimises():
    alone = {p.stem: json.loads(p.read_text()) for p in OVERLAYS.glob("*.json") if not p.stem.startswith("ce+")}
    with_ce = {p.stem: json.loads(p.read_text()) for p in OVERLAYS.glob("ce+*.json")}
    assert {"dice", "focal", "tversky", "boundary", "dice_ce"} <= set(alone)
    for name, config in alone.items():
        assert config["loss_name"] == name and config["loss_weights"] == {name: 1.0}, name
    assert with_ce and {name.removeprefix("ce+") for name in with_ce} <= set(alone)  # each loss alone exists too
    for name, config in with_ce.items():
        assert config["loss_name"] == name
        assert config["loss_weights"] == {"ce": 0.5, name.removeprefix("ce+"): 0.5}, name
    # the compound losses that hold CE already have no ce+ form
    assert not {"ce+ce", "ce+dice_ce", "ce+combo", "ce+exp_log", "ce+unified_focal"} & set(with_ce)
    # a map-reading loss gets its DistanceMapd in both forms
    assert (
        alone["boundary"]["aux_transforms"] == json.loads((OVERLAYS / "ce+boundary.json").read_text())["aux_transforms"]
    )


def test_overlays_are_what_the_generator_writes():
    import runpy

    rendered = runpy.run_path(str(ROOT / "scripts" / "make_loss_configs.py"))["render_all"]()
    on_disk = {p.stem: p.read_text() for p in OVERLAYS.glob("*.json")}
    assert on_disk == rendered, "configs/losses is stale: run python scripts/make_loss_configs.py"


BUNDLE_TRAIN_CONFIGS = sorted((ROOT / "bundles").glob("*/configs/train.json"))


@pytest.mark.parametrize("train_json", BUNDLE_TRAIN_CONFIGS, ids=[p.parts[-3] for p in BUNDLE_TRAIN_CONFIGS])
def test_bundle_default_loss_is_named_ce_plus_dice(train_json):
    config = json.loads(train_json.read_text())
    assert config["loss_name"] == "ce+dice" and config["loss_weights"] == {"ce": 0.5, "dice": 0.5}


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        ("with-ce", ["ce+dice", "ce+focal", "dice_ce", "ce+tversky"]),
        ("alone", ["dice", "focal", "dice_ce", "ce+tversky"]),
    ],
)
def test_protocol_picks_the_overlay_and_the_weights_trained(protocol, expected):
    grid = study.Grid(["synapse_unet3d"], ["dice", "focal", "dice_ce", "ce+tversky"], protocol=protocol)
    assert [spec.loss for spec in grid.runs()] == expected
    weights = [study.trained_weights("synapse_unet3d", spec.loss, {}) for spec in grid.runs()]
    by_hand = [json.loads((OVERLAYS / f"{name}.json").read_text())["loss_weights"] for name in expected]
    assert weights == by_hand
    assert [study.objective(w) for w in weights][2:] == ["dice_ce", "0.5·ce + 0.5·tversky"]
    # a setting may change the weights: the record follows it
    assert study.trained_weights("synapse_unet3d", "ce+dice", {"loss_weights#ce": 0.3}) == {"ce": 0.3, "dice": 0.5}


def fake_finished_run(out: Path, loss: str, done: dict) -> Path:
    folder = out / "runs" / "synapse_unet3d" / loss / "default" / "seed0"
    folder.mkdir(parents=True)
    (folder / "done.json").write_text(json.dumps({"bundle": "synapse_unet3d", "loss": loss, **done}))
    return folder


def test_a_run_from_before_the_renaming_is_refused_not_skipped(tmp_path):
    # an old study folder: runs/…/dice/ was trained as 0.5·CE + 0.5·Dice and records no weights
    folder = fake_finished_run(tmp_path, "dice", {"setting": "default", "seed": 0})
    grid = study.Grid(["synapse_unet3d"], ["dice"], protocol="alone")
    assert study.run_grid(grid, tmp_path, dry_run=True)[["status", "action"]].values.tolist() == [["stale", "refuse"]]
    with pytest.raises(ValueError, match=r"record no weights: dice\.json then meant 0\.5·CE") as info:
        study.run_grid(grid, tmp_path)
    assert f"{folder}: done.json records no loss weights, configs/losses/dice.json now trains dice" in str(info.value)
    assert "nothing was trained or deleted" in str(info.value)
    assert (folder / "done.json").is_file()
    with pytest.raises(ValueError, match=r"records no loss weights.*move its folder"):
        study.collect(tmp_path)


def test_a_run_trained_with_other_weights_is_refused(tmp_path):
    fake_finished_run(tmp_path, "ce+dice", {"setting": "default", "seed": 0, "loss_weights": {"ce": 0.3, "dice": 0.7}})
    grid = study.Grid(["synapse_unet3d"], ["dice"])
    with pytest.raises(ValueError, match=r"'ce': 0\.3.*configs/losses/ce\+dice\.json now trains 0\.5·ce \+ 0\.5·dice"):
        study.run_grid(grid, tmp_path)


# --- statistics in the tables (no training) ----------------------------------------------------------------------


def metrics_table(rows: list[tuple[str, str, str, int, str, float]]) -> pd.DataFrame:
    """(dataset, loss, setting, seed, structure, score) → collect()'s columns (one case per seed)."""
    records = []
    for dataset, loss, setting, seed, structure, score in rows:
        metric = {"dice": score, "hd95": 10 * score} if dataset == "synapse" else {"iou": score}
        network = "UNet 3D" if dataset == "synapse" else "UNet 2D"
        bundle = "synapse_unet3d" if dataset == "synapse" else "cityscapes_2d"
        records.append(
            {"bundle": bundle, "network": network, "dataset": dataset, "loss": loss, "setting": setting}
            | {"seed": seed, "split": "test", "case": "c0", "structure": structure, **metric}
        )
    return pd.DataFrame(records)


def test_tables_show_n_and_a_sample_std_over_seeds_and_nothing_for_one_seed():
    focal = [("synapse", "ce+focal", "default", seed, "liver", dice) for seed, dice in enumerate([0.8, 0.6, 0.4])]
    metrics = metrics_table(
        [*focal, ("synapse", "dice", "default", 0, "liver", 0.9), ("synapse", "ce+focal", "gamma=1.0", 0, "liver", 0.1)]
    )
    tables = study.survey_tables(metrics, {"ce+focal": "default"})
    table3 = tables["table3_synapse"]
    assert table3.loc[("UNet 3D", "ce+focal"), "seeds"] == 3
    assert table3.loc[("UNet 3D", "ce+focal"), "DSC"] == pytest.approx(60.0)
    assert table3.loc[("UNet 3D", "ce+focal"), "DSC std"] == pytest.approx(20.0)  # stdev(80, 60, 40), ddof 1
    assert table3.loc[("UNet 3D", "dice"), "seeds"] == 1 and np.isnan(table3.loc[("UNet 3D", "dice"), "DSC std"])
    table5 = tables["table5_hyperparameters"]  # ce+focal is the focal loss with CE
    assert table5.loc[("UNet 3D", "ce+focal", "gamma=1.0"), "seeds"] == 1
    assert np.isnan(table5.loc[("UNet 3D", "ce+focal", "gamma=1.0"), "HD95 std"])


def test_table4_averages_seeds_of_the_main_setting_only():
    seeds = [("cityscapes", "ce+focal", "default", seed, "road", iou) for seed, iou in enumerate([0.5, 0.7])]
    # another setting of the same loss: not a third seed
    metrics = metrics_table([*seeds, ("cityscapes", "ce+focal", "gamma=1.0", 0, "road", 0.0)])
    table4 = study.survey_tables(metrics, {"ce+focal": "default"})["table4_cityscapes"]
    assert table4.loc[("UNet 2D", "ce+focal")].tolist() == pytest.approx([2, 60.0, np.std([50, 70], ddof=1)])


# --- plots: legends, colour keys, a Cityscapes box plot (no training) -------------------------------------------


@pytest.fixture
def captured(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(study, "_save", lambda figure, path: figures.append(figure) or path)
    return figures


def test_cityscapes_box_plot_shows_the_iou_of_every_class(captured, tmp_path):
    metrics = metrics_table([("cityscapes", "dice_ce", "default", 0, c, v) for c, v in [("road", 0.9), ("car", 0.5)]])
    metrics = pd.concat([metrics, metrics.assign(loss="ce+dice", iou=[0.8, 0.4])])
    study.plot_score_boxes(metrics, {"dice_ce": "default", "ce+dice": "default"}, "cityscapes_2d", tmp_path / "b.png")
    axis = captured[0].axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["dice_ce (n=2)", "ce+dice (n=2)"]
    points = [line.get_ydata().tolist() for line in axis.lines if line.get_marker() == "o"]
    assert points == [[0.9, 0.5], [0.8, 0.4]]
    assert "IoU" in axis.get_title() and axis.get_ylabel() == "IoU"


def test_cityscapes_colour_key_is_the_official_palette_and_road_is_drawn():
    classes = study.ADAPTERS["cityscapes_2d"].classes()
    assert [name for name, _ in classes.values()][:3] == ["road", "sidewalk", "building"] and len(classes) == 19
    # cityscapesscripts/helpers/labels.py: road (128, 64, 128), sky (70, 130, 180), car (0, 0, 142)
    assert classes[0][1] == pytest.approx((128 / 255, 64 / 255, 128 / 255))
    assert classes[10] == ("sky", pytest.approx((70 / 255, 130 / 255, 180 / 255)))
    assert classes[13] == ("car", pytest.approx((0, 0, 142 / 255)))
    painted = study._paint(np.array([[0, 255]]), classes, alpha=0.6)
    assert painted[0, 0].tolist() == pytest.approx([128 / 255, 64 / 255, 128 / 255, 0.6])  # road (trainId 0) shown
    assert painted[0, 1].tolist() == [0, 0, 0, 0]  # ignored 255 left transparent


def test_curves_and_overlays_have_legends_naming_what_was_trained(captured, finished):
    out, grid, _ = finished
    study.plot_curves(out, grid, "synapse_unet3d", out / "c.png")
    study.plot_overlays(out, grid, "synapse_unet3d", out / "o.png")
    curves, overlays = captured
    (legend,) = curves.legends
    assert [t.get_text() for t in legend.get_texts()] == ["ce+focal (1 seed)", "ce+tversky (1 seed)"]
    styles = {(tuple(line.get_color()), line.get_linestyle()) for line in curves.axes[0].lines}
    assert len(styles) == 2  # dice-like curves that overlap stay apart
    assert [axis.get_title() for axis in overlays.axes] == ["reference", "ce+focal", "ce+tversky"]
    (key,) = overlays.legends
    organs = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
    assert [t.get_text() for t in key.get_texts()] == organs
    assert "synapse_unet3d, test case img" in overlays.get_suptitle()
