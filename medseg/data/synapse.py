"""Synapse multi-organ CT as TransUNet preprocessed it: 2D training slices (npz) and 3D test volumes (h5).

Layout under ``root`` (TransUNet's ``--root_path`` parent)::

    train_npz/case0005_slice000.npz      keys "image" (float, HU clipped to [-125, 275] then scaled to [0, 1])
                                         and "label" (0..8), one axial slice per file
    test_vol_h5/case0001.npy.h5          datasets "image" and "label", shape (D, H, W), slices first
    lists/lists_Synapse/train.txt        one slice name per line ("case0031_slice000", no extension)
    lists/lists_Synapse/test_vol.txt     one case name per line ("case0008")

The 8 organs and their label values come from the BTCV → Synapse mapping (:data:`DEFAULT_BTCV_TO_SYNAPSE`,
the widely copied preprocessing); pass another mapping where a dataset was built differently. A validation split
(model selection) is carved from the training cases of ``train.txt``, whole cases at a time; the test volumes
never take part in it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Identityd,
    OneOf,
    RandAxisFlipd,
    RandRotate90d,
    RandRotated,
    Resized,
)

from .loading import CheckAlignedd, LoadArrayd, MapLabelsd, check_files_exist, output_keys, training_part
from .splits import SPLIT_SEED, VAL_FRACTION

__all__ = [
    "BTCV_LABELS",
    "DEFAULT_BTCV_TO_SYNAPSE",
    "SYNAPSE_TEST_CASES",
    "SYNAPSE_TRAIN_CASES",
    "case_name",
    "synapse_datalist",
    "synapse_name_formatter",
    "synapse_organ_names",
    "synapse_slice_transforms",
    "synapse_volume_transforms",
]

#: The 18 training cases of the Synapse split (BTCV case numbers), as in TransUNet's ``train.txt``.
SYNAPSE_TRAIN_CASES: tuple[int, ...] = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
#: The 12 test cases, as in TransUNet's ``test_vol.txt``.
SYNAPSE_TEST_CASES: tuple[int, ...] = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)

#: The 13 organ labels of raw BTCV (0 is background).
BTCV_LABELS: dict[int, str] = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}

#: BTCV label → Synapse label of the widely copied preprocessing; other BTCV labels become background.
DEFAULT_BTCV_TO_SYNAPSE: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}

_SLICE_NAME = re.compile(r"^case\d{4}_slice\d{3,}$")
_CASE_NAME = re.compile(r"^case\d{4}$")


def case_name(case_id: int) -> str:
    """``case0005`` for BTCV case 5, the naming of the Synapse files and lists."""
    return f"case{case_id:04d}"


def synapse_organ_names(mapping: Mapping[int, int] = DEFAULT_BTCV_TO_SYNAPSE) -> dict[int, str]:
    """Synapse label value → organ name, read from a BTCV → Synapse ``mapping`` (default: 1 spleen ... 8 pancreas)."""
    targets = sorted(mapping.values())
    if targets != list(range(1, len(targets) + 1)):
        raise ValueError(f"mapping must send organs to 1..{len(targets)} once each, got targets {targets}")
    unknown = sorted(set(mapping) - set(BTCV_LABELS))
    if unknown:
        raise ValueError(f"mapping has source labels {unknown} that BTCV does not define (1..13)")
    return {int(target): BTCV_LABELS[int(source)] for source, target in sorted(mapping.items(), key=lambda kv: kv[1])}


def _read_list(path: Path, pattern: re.Pattern) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list does not exist: {path}")
    names = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if not pattern.match(name):
            raise ValueError(f"{path}, line {number}: {name!r} is not a Synapse name like {pattern.pattern}")
        names.append(name)
    if not names:
        raise ValueError(f"split list {path} is empty")
    return names


def synapse_datalist(
    root: str | Path,
    split: str = "train",
    list_dir: str | Path | None = None,
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
) -> list[dict[str, Any]]:
    """MONAI-style datalist of the TransUNet Synapse files named by a split list.

    ``split="train"`` and ``"val"`` read ``train.txt`` and give one item per 2D slice: ``"val"`` the slices of
    the validation cases (``val_fraction`` of the training cases, whole cases, seeded:
    :func:`~medseg.data.splits.train_val_split`), ``"train"`` the slices of the others (every training case with
    ``val_fraction=0``, as the TransUNet protocol trains). ``split="test"`` reads ``test_vol.txt`` and gives one
    item per 3D volume. Each item is ``{"image": f, "label": f, "name": n, "case": c}`` with the same file ``f``
    for image and label (load with :class:`LoadArrayd`).

    Args:
        root: the folder holding ``train_npz/`` and ``test_vol_h5/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        list_dir: the folder of ``train.txt`` / ``test_vol.txt``; defaults to ``root/lists/lists_Synapse``.
        val_fraction, seed: the validation split carved from the training cases.

    Raises:
        FileNotFoundError: the list or a listed file is missing (named in the message).
        ValueError: an unknown split, or a list line that is not a Synapse name.
    """
    root = Path(root)
    lists = Path(list_dir) if list_dir is not None else root / "lists" / "lists_Synapse"
    if split in ("train", "val"):
        names = _read_list(lists / "train.txt", _SLICE_NAME)
        items = [{"name": n, "case": n.split("_")[0], "file": root / "train_npz" / f"{n}.npz"} for n in names]
        chosen = set(training_part(sorted({i["case"] for i in items}), split, val_fraction, seed))
        items = [i for i in items if i["case"] in chosen]
    elif split == "test":
        names = _read_list(lists / "test_vol.txt", _CASE_NAME)
        items = [{"name": n, "case": n, "file": root / "test_vol_h5" / f"{n}.npy.h5"} for n in names]
    else:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    datalist = [{"image": str(i["file"]), "label": str(i["file"]), "name": i["name"], "case": i["case"]} for i in items]
    check_files_exist(datalist, ["image"])
    return datalist


def _in_plane_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or two positive ints (H, W), got {image_size}")
    return size


def _load_pair(num_classes: int) -> list[Any]:
    """Read image and label with a channel dim, refuse a pair of two shapes, check the label values."""
    keys = ["image", "label"]
    return [
        LoadArrayd(keys),
        EnsureChannelFirstd(keys, channel_dim="no_channel"),
        CheckAlignedd("label", reference_key="image"),
        MapLabelsd("label", {v: v for v in range(num_classes)}, range(num_classes)),
    ]


def synapse_slice_transforms(
    train: bool,
    image_size: int | Sequence[int] = 224,
    num_classes: int = 9,
    aux_transforms: Sequence[Any] = (),
) -> Compose:
    """Transforms for the 2D slices of the TransUNet protocol: load, check the pair and the labels, zoom, augment.

    Image and label are read from the npz (``(1, H, W)`` after adding the channel), their shapes checked to be
    equal (:class:`~medseg.data.loading.CheckAlignedd`: a label of another size raises naming the file, it is
    never resized to fit), the label values checked against ``0..num_classes-1``, both resized to
    ``image_size`` (an int for a square, or ``(H, W)``; bicubic image, nearest label; TransUNet zooms with
    spline order 3 / 0). Training adds TransUNet's augmentation:
    with probability 0.5 a random rot90 (k in 0..3) and a flip along a random axis, else with probability 0.5
    a rotation in ±20° (nearest for the label, bilinear for the image and the aux maps), else nothing.

    ``aux_transforms`` (e.g. ``DistanceMapd``) run after the zoom, before the first random step, so
    ``CacheDataset`` keeps their output; the keys they write are rotated and flipped with the image and label.
    """

    aux_keys = [k for t in aux_transforms for k in output_keys(t)]
    keys = ["image", "label"]
    chain: list[Any] = [
        *_load_pair(num_classes),
        Resized(keys, spatial_size=_in_plane_size(image_size), mode=("bicubic", "nearest")),
        *aux_transforms,
    ]
    keys = keys + aux_keys
    if train:
        rotate_and_flip = Compose([RandRotate90d(keys, prob=1.0, max_k=4), RandAxisFlipd(keys, prob=1.0)])
        modes = ("bilinear", "nearest", *["bilinear"] * len(aux_keys))
        small_rotation = RandRotated(keys, range_x=math.radians(20), prob=1.0, mode=modes)
        chain.append(OneOf([rotate_and_flip, small_rotation, Identityd(keys)], weights=(0.5, 0.25, 0.25)))
    chain.append(EnsureTyped(keys, track_meta=False))
    return Compose(chain)


def synapse_volume_transforms(num_classes: int = 9, image_size: int | Sequence[int] | None = None) -> Compose:
    """Transforms for the 3D test volumes: load ``(1, D, H, W)`` image and label, check their shapes and the labels.

    Evaluation under the TransUNet protocol zooms each slice to the network size and back. With
    ``image_size`` (an int for a square, or ``(H, W)``) the image's slices are resized to it here, bilinear
    within each slice (trilinear interpolation with the depth unchanged does not mix slices), and the
    resize is recorded in the image's metadata, so that ``Invertd`` can zoom a prediction back to the
    stored size; the label stays at the stored size, the size the protocol scores at. Without ``image_size``
    the volume stays at its stored size.
    """
    chain: list[Any] = _load_pair(num_classes)
    if image_size is not None:
        chain.append(Resized("image", spatial_size=(-1, *_in_plane_size(image_size)), mode="trilinear"))
    return Compose(chain)


def synapse_name_formatter(metadict: Mapping[str, Any] | None, saver: Any) -> dict[str, Any]:
    """``output_name_formatter`` for MONAI's ``SaveImage(d)``: ``case0001`` for ``test_vol_h5/case0001.npy.h5``.

    MONAI's default keeps ``case0001.npy`` (it strips one extension); this strips the TransUNet ``.npy.h5``
    (and any other extension), so that predictions are named like TransUNet's ``case0001_pred.nii.gz``.
    """
    source = (metadict or {}).get("filename_or_obj")
    if not source:
        raise ValueError("cannot name the output file: the metadata has no filename_or_obj")
    name = Path(str(source)).name
    return {"subject": name.split(".", 1)[0], "idx": None}
