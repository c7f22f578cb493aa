"""Cityscapes fine annotations: datalists, labelIds → trainIds (19 classes, 255 ignore), labelIds PNG output.

Layout under ``root``::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    gtFine/.../<city>_<seq>_<frame>_gtFine_labelTrainIds.png    (only after csCreateTrainIdLabelImgs)

The label table reproduces ``cityscapesscripts/helpers/labels.py`` (Cordts et al., "The Cityscapes Dataset
for Semantic Urban Scene Understanding", CVPR 2016); the tests compare it with the package when installed.

The official ``val`` split is what papers report on (the test labels are not public), so it is the test set here:
model selection uses ``train_holdout``, a seeded part of the official ``train`` images, and ``train`` is the rest.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandFlipd,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRanged,
)
from PIL import Image

from .loading import (
    CheckAlignedd,
    MapLabelsd,
    ReadImaged,
    check_files_exist,
    output_keys,
    source_file_name,
    training_part,
)
from .splits import SPLIT_SEED, VAL_FRACTION

__all__ = [
    "CITYSCAPES_LABELS",
    "IGNORE_INDEX",
    "LABEL_ID_TO_TRAIN_ID",
    "TRAIN_CLASS_NAMES",
    "TRAIN_ID_TO_LABEL_ID",
    "CityscapesLabel",
    "CityscapesTrainIdsd",
    "MaskedOneHotd",
    "SaveLabelIdsd",
    "cityscapes_datalist",
    "cityscapes_transforms",
    "labelids_to_trainids",
    "prediction_filename",
    "save_labelids_png",
    "trainids_to_labelids",
]

IGNORE_INDEX = 255


class CityscapesLabel(NamedTuple):
    """One row of the official label table: name, labelId, trainId (255: ignored), category, RGB colour."""

    name: str
    id: int
    train_id: int
    category: str
    color: tuple[int, int, int]


CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    # never drawn into labelIds images (negative ids are skipped when rendering the polygons)
    CityscapesLabel("license plate", -1, -1, "vehicle", (0, 0, 142)),
)

#: labelId (0..33) → trainId (0..18, or 255 for the classes left out of evaluation).
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {label.id: label.train_id for label in CITYSCAPES_LABELS if label.id >= 0}
#: trainId → labelId for the 19 evaluated classes.
TRAIN_ID_TO_LABEL_ID: dict[int, int] = {t: i for i, t in LABEL_ID_TO_TRAIN_ID.items() if t != IGNORE_INDEX}
#: Names of the 19 trainIds, in trainId order.
TRAIN_CLASS_NAMES: tuple[str, ...] = tuple(
    next(label.name for label in CITYSCAPES_LABELS if label.train_id == t) for t in range(len(TRAIN_ID_TO_LABEL_ID))
)

_LABEL_IDS = MapLabelsd("label", LABEL_ID_TO_TRAIN_ID, LABEL_ID_TO_TRAIN_ID.keys(), fill_value=IGNORE_INDEX)
_TRAIN_IDS = MapLabelsd(
    "label", {t: t for t in [*TRAIN_ID_TO_LABEL_ID, IGNORE_INDEX]}, [*TRAIN_ID_TO_LABEL_ID, IGNORE_INDEX]
)
_IMAGE_NAME = re.compile(r"^(?P<city>[^_]+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit\.png$")


def labelids_to_trainids(label_ids: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Map a labelIds array to trainIds (255 for ignored classes); unknown ids raise naming ``source``."""
    return _LABEL_IDS.map_array(np.asarray(label_ids), source)


def trainids_to_labelids(train_ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map a trainIds prediction (0..18) to labelIds as ``uint8``, the format the official evaluation reads.

    Raises ``ValueError`` for any other value, 255 included: the official script cannot score it.
    """
    values = torch.as_tensor(train_ids).detach().cpu().numpy()
    valid = np.isin(values, list(TRAIN_ID_TO_LABEL_ID))
    if not valid.all():
        bad = np.unique(values[~valid]).tolist()
        raise ValueError(f"prediction holds values {bad}; a trainId prediction must lie in 0..18")
    lut = np.zeros(len(TRAIN_ID_TO_LABEL_ID), dtype=np.uint8)
    for train_id, label_id in TRAIN_ID_TO_LABEL_ID.items():
        lut[train_id] = label_id
    return lut[values.astype(np.int64)]


def prediction_filename(image_path: str | Path) -> str:
    """``<city>_<seq>_<frame>_labelIds.png`` for a ``leftImg8bit`` image: the name the official evaluation finds."""
    match = _IMAGE_NAME.match(Path(image_path).name)
    if match is None:
        raise ValueError(f"{image_path} is not a Cityscapes image name like city_000000_000019_leftImg8bit.png")
    return f"{match['city']}_{match['seq']}_{match['frame']}_labelIds.png"


def save_labelids_png(train_ids: np.ndarray | torch.Tensor, path: str | Path) -> Path:
    """Write a ``(H, W)`` trainIds prediction as a labelIds 8-bit PNG (``csEvalPixelLevelSemanticLabeling`` input)."""
    label_ids = trainids_to_labelids(train_ids)
    if label_ids.ndim != 2:
        raise ValueError(f"expected one (H, W) prediction, got shape {tuple(label_ids.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_ids, mode="L").save(path)
    return path


def cityscapes_datalist(
    root: str | Path,
    split: str = "train",
    prefer: str = "labelIds",
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
) -> list[dict[str, Any]]:
    """MONAI-style datalist ``[{"image", "label", "name", "city"}]`` of one Cityscapes split.

    ``"val"`` and ``"test"`` are the official folders. The official ``train`` images are split in two, by image,
    seeded (:func:`~medseg.data.splits.train_val_split`): ``"train_holdout"`` (``val_fraction`` of them, for model
    selection) and ``"train"`` (the rest; all of them with ``val_fraction=0``).

    Every ``leftImg8bit`` image needs its ``gtFine`` label: ``_gtFine_labelIds.png`` or, where only that
    exists, ``_gtFine_labelTrainIds.png`` (``prefer="labelTrainIds"`` takes those first). Test images
    whose label is absent (the public test split) get no ``"label"`` key.

    Raises:
        FileNotFoundError: the image folder, or a train/val label, is missing (named in the message).
        ValueError: an unknown split or an image whose name is not a Cityscapes name.
    """
    if split not in ("train", "train_holdout", "val", "test"):
        raise ValueError(f"split must be 'train', 'train_holdout', 'val' or 'test', got {split!r}")
    if prefer not in ("labelIds", "labelTrainIds"):
        raise ValueError(f"prefer must be 'labelIds' or 'labelTrainIds', got {prefer!r}")
    if split in ("train", "train_holdout"):
        images = _official_split(Path(root), "train", prefer)
        part = "val" if split == "train_holdout" else "train"
        chosen = set(training_part([item["name"] for item in images], part, val_fraction, seed))
        return [item for item in images if item["name"] in chosen]
    return _official_split(Path(root), split, prefer)


def _official_split(root: Path, split: str, prefer: str) -> list[dict[str, Any]]:
    """Every image of the official folder ``split`` with its label."""
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise FileNotFoundError(f"Cityscapes image folder does not exist: {image_dir}")
    suffixes = ("labelIds", "labelTrainIds") if prefer == "labelIds" else ("labelTrainIds", "labelIds")
    datalist = []
    for image in sorted(image_dir.glob("*/*.png")):
        match = _IMAGE_NAME.match(image.name)
        if match is None:
            raise ValueError(f"{image} is not a Cityscapes image name like city_000000_000019_leftImg8bit.png")
        stem = image.name[: -len("_leftImg8bit.png")]
        item = {"image": str(image), "name": stem, "city": match["city"]}
        candidates = [root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_{s}.png" for s in suffixes]
        label = next((c for c in candidates if c.is_file()), None)
        if label is not None:
            item["label"] = str(label)
        elif split != "test":
            raise FileNotFoundError(f"label for {image} does not exist: {candidates[0]}")
        datalist.append(item)
    if not datalist:
        raise FileNotFoundError(f"no *_leftImg8bit.png images under {image_dir}")
    check_files_exist(datalist, ["image", "label"])
    return datalist


class CityscapesTrainIdsd(MapTransform):
    """Turn a loaded ``(1, H, W)`` Cityscapes label into trainIds, by the file it came from.

    A ``*_labelTrainIds.png`` is checked (values 0..18 and 255) and kept; any other label is read as
    labelIds (0..33) and mapped through :data:`LABEL_ID_TO_TRAIN_ID`. A value outside those sets, or a
    label with colour channels, raises a ``ValueError`` naming the file.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            source = source_file_name(d[key])
            if d[key].shape[0] != 1:
                raise ValueError(f"label file {source} has {d[key].shape[0]} channels; expected a 1-channel id PNG")
            table = _TRAIN_IDS if source.endswith("_labelTrainIds.png") else _LABEL_IDS
            d[key] = table.map_array(d[key], source)
        return d


def cityscapes_transforms(
    train: bool,
    crop_size: tuple[int, int] | None = None,
    flip_prob: float = 0.5,
    image_size: Sequence[int] | None = None,
    aux_transforms: Sequence[Any] = (),
    track_meta: bool = False,
) -> Compose:
    """MONAI transforms for Cityscapes: read PNGs as ``(C, H, W)``, labels → trainIds, image → [0, 1].

    An image and label of different sizes raise naming both files (:class:`~medseg.data.loading.CheckAlignedd`),
    before anything is resized.

    ``image_size`` ``(H, W)`` resizes whole frames to a working resolution (image bilinear with Gaussian
    anti-aliasing, label nearest), e.g. ``(512, 1024)`` for half of the 1024×2048 frames. ``aux_transforms``
    (e.g. ``DistanceMapd``) run next, before the first random step, so ``CacheDataset`` keeps their output.
    Training adds a random ``crop_size`` crop (when given) and a horizontal flip with ``flip_prob``, applied to
    the aux keys too. ``track_meta=True`` keeps the metadata and the record of the resize, so that ``Invertd``
    can bring a prediction back to the frame's size and the file name travels with it (inference).
    Items without a ``"label"`` (test split) pass through with the image only.
    """
    aux_keys = [k for t in aux_transforms for k in output_keys(t)]
    keys = ["image", "label"]
    chain: list[Any] = [
        ReadImaged(keys, reader=PILReader(reverse_indexing=False), ensure_channel_first=True, allow_missing_keys=True),
        CheckAlignedd("label", reference_key="image", allow_missing_keys=True),
        CityscapesTrainIdsd("label", allow_missing_keys=True),
        ScaleIntensityRanged("image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
    ]
    if image_size is not None:
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be two positive ints (H, W), got {image_size}")
        chain.append(
            Resized(
                keys,
                spatial_size=tuple(image_size),
                mode=("bilinear", "nearest"),
                anti_aliasing=(True, False),
                allow_missing_keys=True,
            )
        )
    chain += list(aux_transforms)
    keys = keys + aux_keys
    if train:
        if crop_size is not None:
            chain.append(RandSpatialCropd(keys, roi_size=tuple(crop_size), random_size=False, allow_missing_keys=True))
        chain.append(RandFlipd(keys, prob=flip_prob, spatial_axis=1, allow_missing_keys=True))
    chain.append(EnsureTyped(keys, track_meta=track_meta, allow_missing_keys=True))
    return Compose(chain)


class MaskedOneHotd(MapTransform):
    """One-hot encode class-index maps, all channels zero at the pixels whose label is ``ignore_index``.

    MONAI's ``AsDiscreted(to_onehot=...)`` fails on a 255 label; MONAI's metrics (``MeanIoU``, ``MeanDice``)
    sum over pixels, so a pixel that is zero in every channel of both prediction and label takes no part, as
    in the official Cityscapes evaluation. ``keys`` hold ``(1, *spatial)`` class indices (the prediction after
    ``argmax``, the label); ``label_key`` is the map whose ``ignore_index`` pixels are masked in all of them.
    A value outside ``0..num_classes-1`` (other than ``ignore_index`` in the label) raises a ``ValueError``.

    Args:
        keys: the class-index maps to encode, e.g. ``["pred", "label"]``.
        num_classes: the number of channels of the output.
        label_key: the key of the label that defines the ignored pixels.
        ignore_index: the ignored label value (``None``: a plain one-hot encoding).
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        label_key: str = "label",
        ignore_index: int | None = IGNORE_INDEX,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.label_key = label_key
        self.ignore_index = ignore_index

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key not in d:
            raise ValueError(f"MaskedOneHotd needs the label key {self.label_key!r}; the data has {sorted(d)}")
        label = torch.as_tensor(d[self.label_key])
        if label.shape[0] != 1:
            raise ValueError(f"{self.label_key} must hold class indices (1, *spatial), got shape {tuple(label.shape)}")
        ignored = label == self.ignore_index if self.ignore_index is not None else torch.zeros_like(label, dtype=bool)
        for key in self.key_iterator(d):
            indices = torch.as_tensor(d[key])
            if indices.shape != label.shape:
                shapes = f"{tuple(label.shape)}, got {tuple(indices.shape)}"
                raise ValueError(f"{key} must hold class indices of the label's shape {shapes}")
            indices = indices.long().masked_fill(ignored, 0)
            out_of_range = (indices < 0) | (indices >= self.num_classes)
            if out_of_range.any():
                bad = torch.unique(indices[out_of_range]).tolist()
                raise ValueError(f"{key} holds values {bad} outside 0..{self.num_classes - 1}")
            one_hot = torch.nn.functional.one_hot(indices[0], self.num_classes).movedim(-1, 0)
            d[key] = one_hot.masked_fill(ignored, 0).to(torch.float32)
        return d


class SaveLabelIdsd(MapTransform):
    """Write trainIds predictions as labelIds PNGs named for the official evaluation (inference output).

    ``keys`` hold ``(1, H, W)`` trainIds (after ``argmax``) whose MONAI metadata names the source
    ``leftImg8bit`` image (``Invertd`` copies it from the image); each is written to
    ``output_dir/<city>_<seq>_<frame>_labelIds.png`` by :func:`save_labelids_png`, and the path is recorded in
    ``d[f"{key}_path"]``. A prediction without a source file name raises a ``ValueError``.
    """

    def __init__(self, keys: KeysCollection, output_dir: str | Path, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            source = source_file_name(d[key])
            if source == "<unknown file>":
                raise ValueError(
                    f"{key} has no source file name in its metadata: keep the image's metadata (track_meta) and "
                    "copy it to the prediction (Invertd)"
                )
            if d[key].shape[0] != 1:
                raise ValueError(f"{key} must be one (1, H, W) trainIds map, got shape {tuple(d[key].shape)}")
            d[f"{key}_path"] = str(save_labelids_png(d[key][0], self.output_dir / prediction_filename(source)))
        return d
