"""``medseg compare --dataset-dir``: one plan for the grid, test cases never trained on, a table per loss."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medseg import user_study
from medseg.data.synthetic_mri import make_msd, make_nnunet
from medseg.data.user_dataset import user_datalist


def test_prepare_plans_once_and_keeps_labelled_test_cases(tmp_path):
    data = make_nnunet(tmp_path / "Dataset901", cases=4, test_cases=2, size=16)
    shared = user_study.prepare(data, tmp_path / "study")
    assert shared == {"plan_file": str(tmp_path / "study/plans/Dataset901/plan.json"), "test_fraction": 0.0}
    plan = json.loads((tmp_path / "study/plans/Dataset901/plan.json").read_text())
    assert plan["dataset"]["num_training"] == 4
    assert user_study.prepare(data, tmp_path / "study") == shared  # the second time reads the plan


def test_prepare_holds_out_training_cases_when_no_test_case_is_labelled(tmp_path, caplog):
    data = make_msd(tmp_path / "Task09", cases=5, test_cases=1, size=16, test_labels=False)
    with caplog.at_level("WARNING"):
        shared = user_study.prepare(data, tmp_path / "study")
    assert shared["test_fraction"] == user_study.HOLDOUT_FRACTION and "held out" in caplog.text
    test = {d["name"] for d in user_datalist(data, "test", test_fraction=shared["test_fraction"])}
    trained = {d["name"] for s in ("train", "val") for d in user_datalist(data, s, test_fraction=0.2)}
    assert len(test) == 1 and not test & trained and len(trained) == 4


def test_table_averages_structures_then_cases_then_seeds():
    rows = []
    for seed, (a, b) in enumerate([(0.8, 0.4), (0.6, 0.2)]):  # case means: seed 0 (0.6, 0.4), seed 1 (0.4, 0.2)
        for case, shift in (("c1", 0.0), ("c2", -0.2)):
            for structure, dice in (("organ", a + shift), ("lesion", b + shift)):
                rows.append(
                    {
                        "network": "n",
                        "loss": "ce+dice",
                        "setting": "default",
                        "seed": seed,
                        "case": case,
                        "structure": structure,
                        "dice": dice,
                        "hd95": 2.0,
                        "split": "test",
                        "dataset": "user",
                    }
                )
    table = user_study.dataset_tables(pd.DataFrame(rows))["table_own_dataset"]
    row = table.loc[("n", "ce+dice")]
    # hand-worked: seed means 0.5 and 0.3 → 40 %, sample std √0.02 = 14.14 %
    assert row["DSC"] == pytest.approx(40.0) and row["DSC std"] == pytest.approx(14.142, abs=1e-3)
    assert row["seeds"] == 2 and row["cases"] == 2
    assert row["organ DSC"] == pytest.approx(100 * (0.8 + 0.6 + 0.6 + 0.4) / 4)


@pytest.mark.slow
def test_compare_on_a_dataset_dir_trains_each_loss_and_tabulates_it(tmp_path):
    from medseg.study import main

    data = make_msd(tmp_path / "Task09", cases=6, size=20, channels=("T2", "ADC"), seed=3)
    out = tmp_path / "study"
    argv = ["--dataset-dir", str(data), "--losses", "dice", "tversky", "boundary", "--out", str(out)]
    assert main([*argv, "--override", "max_epochs=2", "val_interval=2"]) == 0
    table = pd.read_csv(out / "tables" / "table_own_dataset.csv")
    assert sorted(table.loss) == ["ce+boundary", "ce+dice", "ce+tversky"]
    assert set(table.cases) == {2} and {"organ DSC", "lesion HD95"} <= set(table.columns)
    for plot in ("curves_generic_3d.png", "overlays_generic_3d.png", "dice_boxes_generic_3d.png"):
        assert (out / "plots" / plot).is_file()
    runs = sorted(p.parent.name for p in out.glob("runs/generic_3d/*/default"))
    assert runs == ["ce+boundary", "ce+dice", "ce+tversky"]
