"""A user's own dataset in one of the two standard layouts: nnU-Net v2 raw or Medical Segmentation Decathlon (MSD).

nnU-Net v2 raw (``DatasetXXX_Name/``)::

    dataset.json        channel_names {"0": "T2", "1": "ADC"}, labels {"background": 0, "tumour": 1},
                        numTraining, file_ending (".nii.gz", ".nrrd", ".mha", ".png", ".tif", ...)
    imagesTr/<case>_<XXXX><file_ending>   one file per channel file index XXXX (an RGB PNG holds 3 channels)
    labelsTr/<case><file_ending>
    imagesTs/ (optional), labelsTs/ (optional, medseg scores test cases against it)

MSD (``TaskXX_Name/``)::

    dataset.json        modality {"0": "FLAIR", ...}, labels {"0": "background", "1": "edema"}, numTraining,
                        training [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}], test [...]
    imagesTr/x.nii.gz   all channels in one file (4D when there are several), labelsTr/, imagesTs/

:func:`read_user_dataset` reads either into one :class:`UserDataset`; :func:`check_case` reads a case's headers and
checks channel counts, shapes and affines. :func:`user_datalist` gives MONAI datalists for the seeded validation
split or the k-fold cross-validation carved from the training cases (:mod:`medseg.data.splits`), and for the test
cases. Every error names the file and the ``dataset.json`` field at fault.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .image_files import SUPPORTED_ENDINGS, Geometry, file_ending, read_geometry
from .loading import GRID_TOLERANCE, _largest_voxel_shift
from .splits import SPLIT_SEED, VAL_FRACTION, kfold_split, train_val_split

__all__ = [
    "Case",
    "UserDataset",
    "check_case",
    "read_user_dataset",
    "user_datalist",
]

logger = logging.getLogger(__name__)

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case: its channel files in channel order, its label file (``None`` for unlabelled test cases)."""

    name: str
    images: tuple[Path, ...]
    label: Path | None = None


@dataclass(frozen=True)
class UserDataset:
    """A dataset read from its ``dataset.json``.

    Attributes:
        root: the dataset folder.
        layout: ``"nnunet"`` (nnU-Net v2 raw) or ``"msd"`` (Medical Segmentation Decathlon).
        name: ``name`` from dataset.json, else the folder name.
        channel_names: one name per input channel (``channel_names`` / ``modality``), in channel order.
        labels: label value → name, background (0) included; consecutive values ``0..N-1``.
        file_ending: the image file ending (``.nii.gz``, ``.png``, ...).
        training: case name → :class:`Case` (labelled training cases, sorted by name).
        test: case name → :class:`Case` of ``imagesTs`` (with a label where ``labelsTs`` has one).
        ignore_label: the value of nnU-Net's ``ignore`` label, if the dataset has one (not a class).
    """

    root: Path
    layout: str
    name: str
    channel_names: tuple[str, ...]
    labels: dict[int, str]
    file_ending: str
    training: dict[str, Case]
    test: dict[str, Case] = field(default_factory=dict)
    ignore_label: int | None = None

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"

    @property
    def num_classes(self) -> int:
        """Output channels of a network: background and every class (nnU-Net's ``ignore`` label excluded)."""
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        return [self.labels[v] for v in sorted(self.labels)]

    @property
    def label_values(self) -> list[int]:
        """Every value a label file may hold (the classes and the ignore label)."""
        return sorted(self.labels) + ([self.ignore_label] if self.ignore_label is not None else [])

    @property
    def labelled_test(self) -> dict[str, Case]:
        return {name: case for name, case in self.test.items() if case.label is not None}


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"no dataset.json in {path.parent}: medseg reads nnU-Net v2 raw folders (dataset.json with channel_names, "
            "labels, numTraining, file_ending) and Medical Segmentation Decathlon folders (dataset.json with "
            "modality, labels, training, test)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _require(data: Mapping[str, Any], path: Path, fields: Sequence[str], layout: str) -> None:
    missing = [f for f in fields if f not in data]
    if missing:
        raise ValueError(
            f"{path}: missing field(s) {', '.join(repr(f) for f in missing)} (a {layout} dataset.json needs "
            f"{', '.join(fields)})"
        )


def _channel_names(data: Mapping[str, Any], key: str, path: Path) -> tuple[str, ...]:
    channels = data[key]
    if not isinstance(channels, dict) or not channels:
        raise ValueError(f'{path}: field {key!r} must map channel indices to names, e.g. {{"0": "T2"}}')
    try:
        indices = sorted(int(k) for k in channels)
    except ValueError as err:
        raise ValueError(f"{path}: field {key!r} has non-integer channel indices {sorted(channels)}") from err
    if indices != list(range(len(indices))):
        raise ValueError(f"{path}: field {key!r} must number channels 0..{len(indices) - 1}, got {indices}")
    return tuple(str(channels[str(i)]) for i in indices)


def _nnunet_labels(data: Mapping[str, Any], path: Path) -> tuple[dict[int, str], int | None]:
    labels = data["labels"]
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: field 'labels' must map names to integer values, e.g. {{\"background\": 0}}")
    if "regions_class_order" in data or any(isinstance(v, list | tuple) for v in labels.values()):
        raise ValueError(
            f"{path}: field 'labels' defines regions (label lists, regions_class_order): region-based training "
            "(BraTS-style overlapping regions) is not supported by medseg; convert the dataset to plain labels "
            "(one integer per class) to train it here"
        )
    labels = {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in labels.items()}  # "1" as 1
    bad = {k: v for k, v in labels.items() if isinstance(v, bool) or not isinstance(v, int)}
    if bad:
        raise ValueError(f"{path}: field 'labels' must give an integer value per name, got {bad}")
    ignore = labels.get("ignore")
    plain = {int(v): str(k) for k, v in labels.items() if k != "ignore"}
    if len(plain) != len([k for k in labels if k != "ignore"]):
        raise ValueError(f"{path}: field 'labels' gives one value to several names: {labels}")
    _check_consecutive(plain, path)
    if ignore is not None and ignore != max(plain) + 1:
        raise ValueError(f"{path}: the 'ignore' label in 'labels' must have the highest value, {max(plain) + 1}")
    return plain, ignore


def _msd_labels(data: Mapping[str, Any], path: Path) -> dict[int, str]:
    labels = data["labels"]
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f'{path}: field \'labels\' must map integer values to names, e.g. {{"0": "background"}}')
    try:
        plain = {int(k): str(v) for k, v in labels.items()}
    except ValueError as err:
        raise ValueError(f"{path}: field 'labels' keys must be integer values, got {sorted(labels)}") from err
    _check_consecutive(plain, path)
    return plain


def _check_consecutive(labels: Mapping[int, str], path: Path) -> None:
    values = sorted(labels)
    if values != list(range(len(values))):
        raise ValueError(
            f"{path}: field 'labels' must use consecutive values 0..{len(values) - 1} with 0 the background, "
            f"got {values}"
        )


def _scan_channel_files(folder: Path, ending: str) -> dict[str, dict[int, Path]]:
    """Case → channel file index → file, for ``<case>_<XXXX><ending>`` files in ``folder``."""
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(ending) or path.name.startswith("."):
            if path.is_file() and not path.name.startswith("."):
                logger.warning("ignoring %s: its ending is not the dataset's file_ending %r", path, ending)
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            raise ValueError(
                f"{path}: image files must be named <case>_<XXXX>{ending} with XXXX the 4-digit channel index "
                "(nnU-Net v2 layout)"
            )
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
    return cases


def _channel_files(case: str, files: Mapping[int, Path], folder: Path, num_channels: int, path: Path) -> tuple:
    indices = sorted(files)
    if indices != list(range(len(indices))) or len(indices) > num_channels:
        raise ValueError(
            f"case {case} in {folder} has channel files {[f'{i:04d}' for i in indices]}, but field 'channel_names' "
            f"of {path} lists {num_channels} channel(s): expected _0000 .. _{num_channels - 1:04d}"
        )
    return tuple(files[i] for i in indices)


def _nnunet_cases(root: Path, images: str, labels: str, ending: str, channels: int, required: bool) -> dict:
    image_dir, label_dir = root / images, root / labels
    if not image_dir.is_dir():
        if required:
            raise FileNotFoundError(f"nnU-Net dataset {root} has no {images}/ folder")
        return {}
    cases = {}
    for name, files in _scan_channel_files(image_dir, ending).items():
        label = label_dir / f"{name}{ending}"
        if not label.is_file():
            if required:
                raise FileNotFoundError(f"label file for case {name} does not exist: {label}")
            label = None
        cases[name] = Case(name, _channel_files(name, files, image_dir, channels, root / "dataset.json"), label)
    if label_dir.is_dir():
        stray = sorted(
            p
            for p in label_dir.glob(f"*{ending}")
            if not p.name.startswith(".") and p.name[: -len(ending)] not in cases
        )
        if stray:
            raise FileNotFoundError(
                f"label file {stray[0]} has no image files {image_dir}/{stray[0].name[: -len(ending)]}_XXXX{ending}"
            )
    return cases


def _explicit_nnunet_cases(root: Path, data: Mapping[str, Any], path: Path) -> dict[str, Case]:
    """nnU-Net's optional ``dataset`` field: ``{case: {"images": [...], "label": ...}}``, paths relative to root."""
    cases = {}
    for name, entry in data["dataset"].items():
        if not isinstance(entry, dict) or "images" not in entry or "label" not in entry:
            raise ValueError(f"{path}: entry {name!r} of field 'dataset' needs 'images' (a list) and 'label'")
        files = tuple(root / Path(p) for p in entry["images"])
        cases[name] = Case(name, files, root / Path(entry["label"]))
    return cases


def _read_nnunet(root: Path, data: Mapping[str, Any], path: Path) -> UserDataset:
    channel_key = "modality" if "modality" in data and "channel_names" not in data else "channel_names"
    _require(data, path, [channel_key, "labels", "numTraining", "file_ending"], "nnU-Net v2")
    channels = _channel_names(data, channel_key, path)
    labels, ignore = _nnunet_labels(data, path)
    ending = str(data["file_ending"])
    if ending.lower() not in SUPPORTED_ENDINGS:
        raise ValueError(f"{path}: field 'file_ending' is {ending!r}; supported: {', '.join(SUPPORTED_ENDINGS)}")
    if "dataset" in data:
        training = _explicit_nnunet_cases(root, data, path)
    else:
        training = _nnunet_cases(root, "imagesTr", "labelsTr", ending, len(channels), required=True)
    if len(training) != int(data["numTraining"]):
        raise ValueError(
            f"{path}: field 'numTraining' is {data['numTraining']}, but {len(training)} training cases were found "
            f"in {root / 'imagesTr'}"
        )
    test = _nnunet_cases(root, "imagesTs", "labelsTs", ending, len(channels), required=False)
    name = str(data.get("name") or root.name)
    return UserDataset(root, "nnunet", name, channels, labels, ending, dict(sorted(training.items())), test, ignore)


def _msd_path(root: Path, entry: Any, path: Path, where: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise ValueError(f"{path}: {where} must be a file path relative to the dataset folder, got {entry!r}")
    return (root / entry).resolve() if not Path(entry).is_absolute() else Path(entry)


def _case_name(file: Path) -> str:
    return file.name[: -len(file_ending(file))]


def _read_msd(root: Path, data: Mapping[str, Any], path: Path) -> UserDataset:
    _require(data, path, ["modality", "labels", "training"], "Medical Segmentation Decathlon")
    channels = _channel_names(data, "modality", path)
    labels = _msd_labels(data, path)
    if not isinstance(data["training"], list) or not data["training"]:
        raise ValueError(f"{path}: field 'training' must be a non-empty list of {{'image', 'label'}} entries")
    training: dict[str, Case] = {}
    for index, entry in enumerate(data["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise ValueError(f"{path}: training[{index}] needs 'image' and 'label', got {entry!r}")
        image = _msd_path(root, entry["image"], path, f"training[{index}]['image']")
        label = _msd_path(root, entry["label"], path, f"training[{index}]['label']")
        for file, key in ((image, "image"), (label, "label")):
            if not file.is_file():
                raise FileNotFoundError(f"{path}: training[{index}]['{key}'] does not exist: {file}")
        name = _case_name(image)
        if name in training:
            raise ValueError(f"{path}: field 'training' lists case {name} twice")
        training[name] = Case(name, (image,), label)
    if "numTraining" in data and int(data["numTraining"]) != len(training):
        logger.warning("%s: numTraining is %s but 'training' lists %d cases", path, data["numTraining"], len(training))
    test: dict[str, Case] = {}
    for index, entry in enumerate(data.get("test") or []):
        image = _msd_path(root, entry["image"] if isinstance(entry, dict) else entry, path, f"test[{index}]")
        if not image.is_file():
            raise FileNotFoundError(f"{path}: test[{index}] does not exist: {image}")
        label = root / "labelsTs" / image.name
        test[_case_name(image)] = Case(_case_name(image), (image,), label if label.is_file() else None)
    ending = file_ending(next(iter(training.values())).images[0])
    name = str(data.get("name") or root.name)
    return UserDataset(root, "msd", name, channels, labels, ending, dict(sorted(training.items())), test)


def read_user_dataset(root: str | Path) -> UserDataset:
    """Read an nnU-Net v2 raw or an MSD dataset folder (the layout is told by its ``dataset.json``).

    nnU-Net v2 is recognised by ``channel_names`` or ``file_ending``, MSD by a ``training`` list. Every listed or
    found file must exist; labels must be plain consecutive integers (regions are refused).

    Raises:
        FileNotFoundError: the folder, ``dataset.json``, an image or a label is missing (named in the message).
        ValueError: a field is missing or malformed (the message names ``dataset.json`` and the field).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder does not exist: {root}")
    path = root / "dataset.json"
    data = _load_json(path)
    if "channel_names" in data or "file_ending" in data:
        return _read_nnunet(root, data, path)
    if "training" in data:
        return _read_msd(root, data, path)
    raise ValueError(
        f"{path} is neither nnU-Net v2 (needs channel_names, labels, numTraining, file_ending) nor MSD (needs "
        "modality, labels, training): cannot tell the layout"
    )


def _grid_shift(a: Geometry, b: Geometry) -> float:
    """How far apart (mm) the two headers place one voxel of the grid, at worst (a corner)."""
    return _largest_voxel_shift(a.affine, b.affine, a.shape)


def _check_same_grid(a: Geometry, b: Geometry, what: str) -> None:
    """The rule of :class:`~medseg.data.loading.CheckAlignedd`: same shape, voxels within 0.001 voxel spacing."""
    if a.shape != b.shape:
        raise ValueError(
            f"{what} {b.path} does not lie on the grid of {a.path}: shape {b.shape} differs from {a.shape}"
        )
    if a.affine.shape != b.affine.shape:
        raise ValueError(f"{what} {b.path} and {a.path} have affines of different ranks")
    allowed = GRID_TOLERANCE * min(a.spacing)
    shift = _grid_shift(a, b)
    if shift > allowed:
        raise ValueError(
            f"{what} {b.path} does not lie on the grid of {a.path}: their affines place a voxel {shift:.4g} mm apart "
            f"(allowed {allowed:.3g} mm). Affine {np.round(b.affine, 4).tolist()} vs {np.round(a.affine, 4).tolist()}"
        )


def check_case(case: Case, dataset: UserDataset) -> Geometry:
    """Read a case's headers; check its channel count and that every file shares one grid. Returns the grid.

    Raises:
        ValueError: the channels in the files do not add up to ``channel_names``/``modality``, or a channel file or
            the label has another shape or affine than the first channel file (the message names both files).
    """
    geometries = [read_geometry(p) for p in case.images]
    first = geometries[0]
    field_name = "modality" if dataset.layout == "msd" else "channel_names"
    channels = sum(g.channels for g in geometries)
    if channels != len(dataset.channel_names):
        raise ValueError(
            f"case {case.name}: its image file(s) {[str(p) for p in case.images]} hold {channels} channel(s), but "
            f"field '{field_name}' of {dataset.dataset_json} lists {len(dataset.channel_names)} "
            f"({', '.join(dataset.channel_names)})"
        )
    for geometry in geometries[1:]:
        _check_same_grid(first, geometry, "channel file")
    if case.label is not None:
        label = read_geometry(case.label)
        if label.channels != 1:
            raise ValueError(f"label file {case.label} has {label.channels} channels; expected one label map")
        _check_same_grid(first, label, "label file")
    return first


def _item(case: Case) -> dict[str, Any]:
    item: dict[str, Any] = {"image": [str(p) for p in case.images], "name": case.name, "reference": str(case.images[0])}
    if case.label is not None:
        item["label"] = str(case.label)
    return item


def user_datalist(
    root: str | Path | UserDataset,
    split: str = "train",
    fold: int | None = None,
    n_folds: int = 5,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = 0.0,
    seed: int = SPLIT_SEED,
) -> list[dict[str, Any]]:
    """MONAI datalist ``[{"image": [channel files], "label", "name", "reference"}]`` of a split of a user dataset.

    Splits:
        ``train`` / ``val``: the training cases split into training and validation (model selection) by a seeded
        hold-out of ``val_fraction`` (:func:`~medseg.data.splits.train_val_split`), or fold ``fold`` of
        ``n_folds``-fold cross-validation (:func:`~medseg.data.splits.kfold_split`, as nnU-Net's 5 folds).
        ``test``: the labelled test cases (``imagesTs`` with ``labelsTs``); with ``test_fraction`` > 0 instead a
        seeded hold-out of that fraction of the training cases, set aside before the train/val split so it never
        takes part in training or model selection.
        ``test_all``: every ``imagesTs`` case, labelled or not. ``all``: every training case.

    ``reference`` is the case's first channel file: predictions are written in its geometry.
    """
    dataset = root if isinstance(root, UserDataset) else read_user_dataset(root)
    names = sorted(dataset.training)
    held_out: list[str] = []
    if test_fraction > 0:
        names, held_out = train_val_split(names, test_fraction, seed)
    if split in ("train", "val"):
        train, val = (
            kfold_split(names, fold, n_folds, seed) if fold is not None else train_val_split(names, val_fraction, seed)
        )
        chosen = [dataset.training[n] for n in (train if split == "train" else val)]
    elif split == "test":
        if test_fraction > 0:
            chosen = [dataset.training[n] for n in held_out]
        else:
            chosen = list(dataset.labelled_test.values())
            if not chosen:
                raise ValueError(
                    f"{dataset.root} has no labelled test cases (imagesTs with labelsTs): hold out part of the "
                    "training cases with test_fraction (e.g. 0.2), or predict the unlabelled ones with split 'test_all'"
                )
    elif split == "test_all":
        chosen = list(dataset.test.values())
        if not chosen:
            raise ValueError(f"{dataset.root} has no test cases (imagesTs/)")
    elif split == "all":
        chosen = [dataset.training[n] for n in names + held_out]
    else:
        raise ValueError(f"split must be 'train', 'val', 'test', 'test_all' or 'all', got {split!r}")
    return [_item(c) for c in sorted(chosen, key=lambda c: c.name)]
