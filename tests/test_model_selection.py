"""No test case takes part in training or model selection: every bundle's configs, and the study runner's runs.

The case sets are read from what the configs hand to MONAI (``train#dataset#data``, ``validate#dataset#data``,
``dataset#data`` of inference), resolved by MONAI's ``ConfigParser``, and compared by case: a BTCV/Synapse case
number, a Cityscapes image name, or a user dataset's case name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, run

import medseg.bundles
import medseg.engine
from medseg import study
from medseg.data import SYNAPSE_TEST_CASES, SYNAPSE_TRAIN_CASES
from medseg.data.synthetic import make_synapse
from medseg.data.synthetic_mri import make_nnunet
from tests._sizes import TINY_UNET3D

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"


def case_of(path: str | Path) -> int | str:
    """The case a file belongs to: its BTCV/Synapse case number, its Cityscapes image name, else its name without
    extensions (a user dataset's case)."""
    name = Path(path).name
    for suffix in ("_leftImg8bit.png", "_labelIds.png"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    number = re.match(r"(?:img|label|case)(\d{4})", name)
    return int(number.group(1)) if number else name.split(".")[0]


def cases(datalist: Iterable[Mapping[str, Any]]) -> set:
    """The cases of a datalist: a user dataset's items name their case (their images are lists of channel files)."""
    return {item["name"] if isinstance(item["image"], list) else case_of(item["image"]) for item in datalist}


def parse(config_files: str | list[str], overrides: Mapping[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_files)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def validates(parser: ConfigParser) -> bool:
    """Whether training runs the ``validate`` evaluator (a ``ValidationHandler`` among the train handlers)."""
    return any(str(h.get("_target_", "")).endswith("ValidationHandler") for h in parser.get("train#handlers"))


def saves_model_by_metric(parser: ConfigParser) -> bool:
    """Whether ``model.pt`` is the best model of the validation (a key-metric saver among its handlers)."""
    return any(
        h.get("save_key_metric") and h.get("key_metric_filename") == "model.pt" for h in parser.get("validate#handlers")
    )


def training_sets(config_files: str | list[str], overrides: Mapping[str, Any]) -> tuple[set, set]:
    """(cases trained on, cases that select the model: empty when training runs no validation)."""
    parser = parse(config_files, overrides)
    train = cases(parser.get_parsed_content("train#dataset#data"))
    return train, cases(parser.get_parsed_content("validate#dataset#data")) if validates(parser) else set()


# --- every bundle, at the size of the real datasets (empty files: the datalists only list them) -------------------


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def btcv_folder(root: Path) -> Path:
    for case in SYNAPSE_TRAIN_CASES + SYNAPSE_TEST_CASES:
        touch(
            root / f"RawData/Training/img/img{case:04d}.nii.gz", root / f"RawData/Training/label/label{case:04d}.nii.gz"
        )
    return root


def transunet_folder(root: Path) -> Path:
    slices = [f"case{case:04d}_slice{i:03d}" for case in SYNAPSE_TRAIN_CASES for i in range(2)]
    volumes = [f"case{case:04d}" for case in SYNAPSE_TEST_CASES]
    touch(*(root / "train_npz" / f"{name}.npz" for name in slices))
    touch(*(root / "test_vol_h5" / f"{name}.npy.h5" for name in volumes))
    (root / "lists" / "lists_Synapse").mkdir(parents=True)
    (root / "lists" / "lists_Synapse" / "train.txt").write_text("\n".join(slices))
    (root / "lists" / "lists_Synapse" / "test_vol.txt").write_text("\n".join(volumes))
    return root


CITYSCAPES = {"train": ("aachen", 10), "val": ("frankfurt", 3), "test": ("berlin", 2)}


def cityscapes_folder(root: Path) -> Path:
    for split, (city, n) in CITYSCAPES.items():
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            touch(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            if split != "test":
                touch(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
    return root


def official(split: str) -> set:
    city, n = CITYSCAPES[split]
    return {f"{city}_{i:06d}_000019" for i in range(n)}


def nnunet_folder(root: Path) -> Path:
    return make_nnunet(root, cases=10, test_cases=3, size=8)


#: the case names make_nnunet gives its training and labelled test cases
NNUNET_TRAIN = {f"mri_{i:03d}" for i in range(10)}
NNUNET_TEST = {f"mri_{i:03d}" for i in range(10, 13)}
COVERED = ("synapse_unet3d", "synapse_transunet", "cityscapes_2d", "generic_3d")


def test_every_bundle_is_covered():
    bundles = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())
    assert bundles == sorted(COVERED), "add the new bundle's split check to this module"


@pytest.mark.parametrize(
    ("bundle", "make", "train_cases", "test_cases"),
    [
        ("synapse_unet3d", btcv_folder, set(SYNAPSE_TRAIN_CASES), set(SYNAPSE_TEST_CASES)),
        ("synapse_transunet", transunet_folder, set(SYNAPSE_TRAIN_CASES), set(SYNAPSE_TEST_CASES)),
        ("cityscapes_2d", cityscapes_folder, official("train"), official("val")),
        ("generic_3d", nnunet_folder, NNUNET_TRAIN, NNUNET_TEST),
    ],
)
def test_bundle_trains_and_selects_on_training_cases_and_scores_the_test_cases(
    tmp_path, bundle, make, train_cases, test_cases
):
    configs = BUNDLES / bundle / "configs"
    data = {"dataset_dir": str(make(tmp_path))}
    train, val = training_sets(str(configs / "train.json"), data)
    evaluated = cases(
        parse([str(configs / "train.json"), str(configs / "evaluate.json")], data).get_parsed_content(
            "validate#dataset#data"
        )
    )
    inferred = cases(parse(str(configs / "inference.json"), data).get_parsed_content("dataset#data"))
    assert evaluated == inferred == test_cases  # the bundle's test set: Synapse's 12 cases, Cityscapes' official val
    assert not (train | val) & test_cases and not train & val
    if bundle == "synapse_transunet":
        # TransUNet's protocol: all 18 training cases, no validation, model.pt the last epoch's weights
        parser = parse(str(configs / "train.json"), data)
        assert train == train_cases and not val and not saves_model_by_metric(parser)
        final = [h for h in parser.get("train#checkpointing") if h.get("save_final")]
        assert [h["final_filename"] for h in final] == ["model.pt"]
    else:
        # a seeded fifth of the training cases selects model.pt (best validation metric), the rest trains
        assert train | val == train_cases and len(val) == round(0.2 * len(train_cases))
        assert saves_model_by_metric(parse(str(configs / "train.json"), data))


def test_transunet_model_is_the_last_epoch(tmp_path):
    data = make_synapse(tmp_path / "data", layout="transunet", cases=4, size=32, seed=0)
    tiny = {"max_epochs": 1, "num_workers": 0, "batch_size": 8, "roi_size": [16, 16], "amp": False}
    configs = BUNDLES / "synapse_transunet" / "configs"
    run(
        config_file=str(configs / "train.json"),
        logging_file=False,
        bundle_root=str(tmp_path / "run"),
        dataset_dir=str(data),
        **{"network_def#_target_": "medseg.networks.TransUNet.tiny"},
        **tiny,
    )
    last = torch.load(medseg.engine.last_checkpoint(tmp_path / "run" / "models"), weights_only=True)["network"]
    model = torch.load(tmp_path / "run" / "models" / "model.pt", weights_only=True)
    assert model.keys() == last.keys() and all(torch.equal(model[k], last[k]) for k in model)


# --- the study runner: the training configs it hands to MONAI and the test cases it scores --------------------------


class RecordingRun:
    """Stands in for ``monai.bundle.run`` in :mod:`medseg.bundles`: records each run's case sets, then runs it."""

    def __init__(self) -> None:
        self.trained: list[tuple[set, set]] = []
        self.inferred: list[set] = []

    def __call__(self, **kwargs: Any) -> Any:
        files, overrides = kwargs["config_file"], {k: v for k, v in kwargs.items() if k != "config_file"}
        if str(files).endswith("inference.json"):
            self.inferred.append(cases(parse(files, overrides).get_parsed_content("dataset#data")))
        else:
            self.trained.append(training_sets(files, overrides))
        return run(**kwargs)


#: one epoch at the tests' CPU sizes
TINY = {
    "synapse_unet3d": TINY_UNET3D,
    "cityscapes_2d": {**study.CPU_CITYSCAPES, "max_epochs": 1, "val_interval": 1},
}
SYNTHETIC = {
    "synapse_unet3d": {"cases": 6, "size": 32, "seed": 0},
    "cityscapes_2d": {"cases": 6, "size": 64, "seed": 0},
}


@pytest.mark.parametrize("bundle", sorted(study.ADAPTERS))
def test_study_runs_select_models_without_test_cases(tmp_path, monkeypatch, bundle):
    recorder = RecordingRun()
    monkeypatch.setattr(medseg.bundles, "run", recorder)
    preset = study.PRESETS["tiny"]()
    one_epoch = {**preset.overrides.get(bundle, {}), "max_epochs": 1, "val_interval": 1, **TINY.get(bundle, {})}
    grid = dataclasses.replace(
        preset,
        bundles=[bundle],
        losses=["dice"],
        settings={},
        overrides={bundle: one_epoch},
        synthetic=SYNTHETIC.get(bundle, {"cases": 6, "size": 16, "seed": 0}),
    )
    study.run_grid(grid, tmp_path, log=lambda _: None)
    (folder,) = [spec.folder(tmp_path) for spec in grid.runs()]
    scored = pd.read_csv(folder / "test_metrics.csv")
    predicted = {case_of(p) for p in (folder / "predictions").iterdir()}
    [(train, val)], [inferred] = recorder.trained, recorder.inferred
    assert predicted == inferred and len(scored) > 0
    if set(scored.case) != {"val"}:  # scored per case; Cityscapes scores the whole official val set at once
        assert {case_of(c) for c in scored.case} == inferred
    assert train and val and inferred  # model.pt is selected on validation cases
    assert not (train | val) & inferred and not train & val
