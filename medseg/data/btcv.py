"""Raw BTCV abdomen CT (NIfTI, 13 organs, HU) under the Synapse protocol: 18/12 split, 13 → 8 labels.

Layout under ``root``::

    RawData/Training/img/img0001.nii.gz     CT in HU, anisotropic spacing (from the NIfTI header)
    RawData/Training/label/label0001.nii.gz 0 background, 1..13 organs (:data:`~medseg.data.synapse.BTCV_LABELS`)
    dataset_0.json                          optional MONAI/Decathlon datalist ("training", "validation"
                                            lists of {"image", "label"} paths relative to ``root``)

When ``dataset_0.json`` is present its labelled entries are the cases; otherwise the ``img`` folder is scanned.
Cases are split by the Synapse protocol (:data:`~medseg.data.synapse.SYNAPSE_TRAIN_CASES` /
``SYNAPSE_TEST_CASES``) when all 30 are there. A folder that lacks some of them (a subset, another
numbering) falls back to a seeded random split with the protocol's ratio (12/30 = 0.4 of the cases for
testing, at least one, seed 1234: TransUNet's seed), and says so in the log. The validation split (model
selection) is carved from the training cases only (:func:`~medseg.data.splits.train_val_split`: 0.2 of them,
seed 1234), so a test case never takes part in training or model selection. The ``training`` / ``validation``
sections of ``dataset_0.json`` only list cases: MONAI's BTCV tutorial puts Synapse test cases (0035, 0036,
0038) in its ``validation`` list and others (0001 ... 0004, ...) in ``training``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import load_decathlon_datalist
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from .augment import NnUNetAugmentd
from .loading import CheckAlignedd, MapLabelsd, ReadImaged, check_files_exist, output_keys, training_part
from .splits import SPLIT_SEED, VAL_FRACTION
from .synapse import BTCV_LABELS, DEFAULT_BTCV_TO_SYNAPSE, SYNAPSE_TEST_CASES, SYNAPSE_TRAIN_CASES, case_name

__all__ = ["btcv_cases", "btcv_datalist", "btcv_transforms", "split_cases"]

logger = logging.getLogger(__name__)

#: Fraction of the cases kept for testing by the fallback split (the protocol's 12 of 30).
FALLBACK_TEST_FRACTION = 12 / 30
#: Seed of the fallback split (TransUNet's training seed).
FALLBACK_SEED = 1234

_IMAGE_NAME = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_CASE_NUMBER = re.compile(r"(\d+)\.nii(\.gz)?$")


def _scan_folder(root: Path) -> dict[int, dict[str, str]]:
    image_dir = root / "RawData" / "Training" / "img"
    label_dir = root / "RawData" / "Training" / "label"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"BTCV image folder does not exist: {image_dir}")
    cases: dict[int, dict[str, str]] = {}
    for image in sorted(image_dir.iterdir()):
        match = _IMAGE_NAME.match(image.name)
        if match is None:
            logger.warning("ignoring %s: not a BTCV image name like img0001.nii.gz", image)
            continue
        case_id = int(match.group(1))
        label = label_dir / image.name.replace("img", "label", 1)
        if not label.is_file():
            raise FileNotFoundError(f"label file for {image} does not exist: {label}")
        cases[case_id] = {"image": str(image), "label": str(label)}
    if label_dir.is_dir():
        for label in sorted(label_dir.iterdir()):
            image = image_dir / label.name.replace("label", "img", 1)
            if label.name.startswith("label") and not image.exists():
                raise FileNotFoundError(f"image file for {label} does not exist: {image}")
    return cases


def _read_datalist(path: Path, root: Path) -> dict[int, dict[str, str]]:
    try:
        sections = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    with_labels: list[dict] = []
    for section in ("training", "validation"):
        if section in sections:
            with_labels += load_decathlon_datalist(path, is_segmentation=True, data_list_key=section, base_dir=root)
    cases: dict[int, dict[str, str]] = {}
    for item in with_labels:
        if "image" not in item or "label" not in item:
            raise ValueError(f"datalist {path} has an entry without image or label: {item}")
        match = _CASE_NUMBER.search(Path(item["image"]).name)
        if match is None:
            raise ValueError(f"{path}: cannot read a case number from image path {item['image']}")
        case_id = int(match.group(1))
        if case_id in cases:
            raise ValueError(f"datalist {path} lists case {case_name(case_id)} twice")
        cases[case_id] = {"image": str(item["image"]), "label": str(item["label"])}
    if not cases:
        raise ValueError(f"datalist {path} has no labelled entries under 'training' or 'validation'")
    return cases


def btcv_cases(root: str | Path, datalist_json: str | None = "dataset_0.json") -> dict[int, dict[str, str]]:
    """Case number → ``{"image", "label"}`` paths of the labelled BTCV cases under ``root``.

    Read from ``root/datalist_json`` when that file exists (``None`` never reads one), otherwise from the
    ``RawData/Training`` folders. Every image needs its label and the other way round.

    Raises:
        FileNotFoundError: a folder, an image or a label is missing (named in the message).
        ValueError: a datalist that cannot be read or has no labelled entries.
    """
    root = Path(root)
    json_path = root / datalist_json if datalist_json is not None else None
    if json_path is not None and json_path.is_file():
        cases = _read_datalist(json_path, root)
        logger.info("BTCV cases read from %s: %d labelled", json_path, len(cases))
    else:
        cases = _scan_folder(root)
    if not cases:
        raise FileNotFoundError(f"no BTCV cases found under {root}")
    check_files_exist([{**files, "name": case_name(c)} for c, files in cases.items()], ["image", "label"])
    return cases


def split_cases(
    case_ids: Sequence[int], test_fraction: float = FALLBACK_TEST_FRACTION, seed: int = FALLBACK_SEED
) -> tuple[list[int], list[int]]:
    """(train, test) case numbers: the Synapse split when all its 30 cases are present, else a seeded one.

    The fallback permutes the sorted case numbers with ``numpy.random.default_rng(seed)`` and takes the
    first ``max(1, round(test_fraction * n))`` as test cases (none when there is a single case). Cases
    outside the Synapse 30, when all 30 are present, belong to neither split; a warning lists them.
    """
    present = sorted({int(c) for c in case_ids})
    standard = set(SYNAPSE_TRAIN_CASES) | set(SYNAPSE_TEST_CASES)
    missing = sorted(standard - set(present))
    if not missing:
        extra = sorted(set(present) - standard)
        if extra:
            logger.warning("BTCV cases %s are outside the Synapse split and are not used", extra)
        return list(SYNAPSE_TRAIN_CASES), list(SYNAPSE_TEST_CASES)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    order = [present[i] for i in np.random.default_rng(seed).permutation(len(present))]
    n_test = 0 if len(present) < 2 else max(1, round(test_fraction * len(present)))
    test, train = sorted(order[:n_test]), sorted(order[n_test:])
    logger.warning(
        "BTCV folder lacks %d of the 30 Synapse cases (%s): using a seeded split instead "
        "(test fraction %.2f, seed %d): train %s, test %s",
        len(missing),
        ", ".join(case_name(c) for c in missing),
        test_fraction,
        seed,
        train,
        test,
    )
    return train, test


def btcv_datalist(
    root: str | Path,
    split: str = "train",
    datalist_json: str | None = "dataset_0.json",
    test_fraction: float = FALLBACK_TEST_FRACTION,
    seed: int = FALLBACK_SEED,
    val_fraction: float = VAL_FRACTION,
    val_seed: int = SPLIT_SEED,
) -> list[dict[str, Any]]:
    """MONAI-style datalist ``[{"image", "label", "name"}]`` of raw BTCV under the Synapse protocol.

    Args:
        root: the folder holding ``RawData/`` (and ``dataset_0.json`` if any).
        split: ``"train"`` (the training cases minus the validation ones), ``"val"`` (the validation cases,
            carved from the training cases), ``"test"`` or ``"all"``.
        datalist_json: the datalist file name under ``root``, read when present; ``None`` to always scan.
        test_fraction, seed: the fallback split used when the Synapse cases are not all there.
        val_fraction, val_seed: the validation split (``val_fraction=0``: none, ``"train"`` is every training case).
    """
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
    cases = btcv_cases(root, datalist_json)
    train, test = split_cases(list(cases), test_fraction, seed)
    if split in ("train", "val"):
        chosen = training_part(train, split, val_fraction, val_seed)
    else:
        chosen = test if split == "test" else sorted(cases)
    return [{**cases[c], "name": case_name(c)} for c in chosen]


def btcv_transforms(
    train: bool,
    mapping: Mapping[int, int] | None = DEFAULT_BTCV_TO_SYNAPSE,
    pixdim: Sequence[float] = (1.5, 1.5, 2.0),
    hu_window: Sequence[float] = (-175.0, 250.0),
    roi_size: Sequence[int] = (96, 96, 96),
    num_samples: int = 4,
    augmentation: str = "monai",
    reader: str = "NibabelReader",
    aux_transforms: Sequence[Any] = (),
) -> Compose:
    """MONAI transforms for 3D BTCV volumes, after MONAI's BTCV recipe (the defaults come from it).

    Read (``NibabelReader`` or ``ITKReader``), check that image and label share one voxel grid (shape and affine,
    :class:`~medseg.data.loading.CheckAlignedd`: a mismatch raises naming both files), map labels (``mapping``:
    BTCV → Synapse by default, ``None`` keeps the 13 organs; any value outside 0..13 raises naming the file),
    orient to RAS, resample to
    ``pixdim`` mm (bilinear image, nearest label), window HU to ``hu_window`` → [0, 1], crop to the body.
    Training then pads to and samples ``num_samples`` patches of ``roi_size`` (half centred on foreground)
    and augments: ``"monai"`` (the recipe's flips, rot90 and intensity shift), ``"nnunet"``
    (:class:`~medseg.data.augment.NnUNetAugmentd`) or ``"none"``.

    ``aux_transforms`` (e.g. ``DistanceMapd``) run after the deterministic steps, before the first random one, so
    ``CacheDataset`` keeps their output; the keys they write are cropped and flipped with the image and label.
    """
    aux_keys = [k for t in aux_transforms for k in output_keys(t)]
    keys = ["image", "label"]
    label_map = dict(mapping) if mapping is not None else {v: v for v in BTCV_LABELS}
    chain: list[Any] = [
        ReadImaged(keys, reader=reader, ensure_channel_first=True),
        CheckAlignedd("label", reference_key="image"),
        MapLabelsd("label", label_map, range(len(BTCV_LABELS) + 1)),
        Orientationd(keys, axcodes="RAS", labels=None),
        Spacingd(keys, pixdim=tuple(pixdim), mode=("bilinear", "nearest")),
        ScaleIntensityRanged("image", a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys, source_key="image", allow_smaller=True),
    ]
    if train:
        chain.append(SpatialPadd(keys, spatial_size=tuple(roi_size)))
    chain += list(aux_transforms)
    keys = keys + aux_keys
    if train:
        chain += [
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=tuple(roi_size),
                pos=1,
                neg=1,
                num_samples=num_samples,
                image_key="image",
                image_threshold=0,
            ),
        ]
        if augmentation == "monai":
            chain += [RandFlipd(keys, prob=0.1, spatial_axis=axis) for axis in range(3)]
            chain += [RandRotate90d(keys, prob=0.1, max_k=3), RandShiftIntensityd("image", offsets=0.1, prob=0.5)]
        elif augmentation == "nnunet":
            chain.append(NnUNetAugmentd(image_keys=["image"], label_keys=["label"], distance_keys=aux_keys))
        elif augmentation != "none":
            raise ValueError(f"augmentation must be 'monai', 'nnunet' or 'none', got {augmentation!r}")
    chain.append(EnsureTyped(keys, track_meta=False))
    return Compose(chain)
