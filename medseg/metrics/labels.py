"""Label spaces: which values are scored under which names, which may be ignored, and how references reach them.

A :class:`LabelSpace` comes from a label map (flat JSON, bundle ``metadata.json``, Decathlon or nnU-Net
``dataset.json``), from ``--num-classes``, or from a MONAI bundle (a name under ``bundles/`` or a folder).
A bundle that trains through a ``label_mapping`` (``synapse_unet3d``: raw BTCV labels 0..13 → Synapse 0..8,
``$medseg.data.synapse.DEFAULT_BTCV_TO_SYNAPSE``, read from its ``train.json`` with ``monai.bundle.ConfigParser``)
brings raw references into its label space the way its training does (:class:`medseg.data.MapLabelsd`'s lookup
table), while predictions are in the bundle's space already.

Every value of a prediction or reference must be background (0), a scored label, or a value the user chose to
ignore; anything else is refused with the file, the values and the fix (:func:`check_values`). Ignored values
(``--ignore-labels``): reference voxels holding one are left out of the scoring (prediction and reference both
set to background there, as nnU-Net's ignore label); a prediction voxel holding one counts as background.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "LabelSpace",
    "RefSpace",
    "bundle_label_space",
    "check_values",
    "classify_reference",
    "label_space",
    "prepare_pair",
    "present_values",
    "read_label_map",
]

#: How references relate to a bundle's ``label_mapping``: ``raw`` (mapped, as the training maps them),
#: ``bundle`` (already in the bundle's label space) or ``auto`` (decided from their values).
RefSpace = Literal["auto", "raw", "bundle"]


@dataclass(frozen=True)
class LabelSpace:
    """The scored labels and how to read predictions and references.

    Attributes:
        names: scored label value → structure name (background 0 left out).
        ignore: values left out of the scoring (module doc).
        mapping: raw reference value → scored value (a bundle's ``label_mapping``); ``None``: no mapping.
        raw_values: every value a raw reference may hold (the training's ``source_values``); with ``mapping``.
        source: where the label space comes from, in words (written into the summary).
    """

    names: dict[int, str]
    ignore: frozenset[int] = frozenset()
    mapping: dict[int, int] | None = None
    raw_values: frozenset[int] | None = None
    source: str = "label map"

    def __post_init__(self) -> None:
        if not self.names or min(self.names) < 1:
            raise ValueError(f"labels must map positive label values to names, got {self.names}")
        if len(set(self.names.values())) != len(self.names):
            raise ValueError(f"structure names must be unique, got {self.names}")
        overlap = sorted(self.ignore & ({0} | set(self.names)))
        if overlap:
            raise ValueError(f"ignored values {overlap} are background or scored labels; ignore other values only")
        if self.mapping is not None:
            if self.raw_values is None:
                raise ValueError("a label mapping needs the raw values references may hold")
            targets = sorted(set(self.mapping.values()) - {0})
            if not set(targets) <= set(self.names):
                raise ValueError(f"label mapping targets {targets} are not all scored labels {sorted(self.names)}")
            self.lookup  # noqa: B018 -- build the table now: a mapping from values outside raw_values raises here

    @cached_property
    def lookup(self) -> np.ndarray:
        """``lookup[raw value]`` = scored value, as the training's :class:`medseg.data.MapLabelsd` builds it."""
        from medseg.data.loading import label_lookup_table

        if self.mapping is None or self.raw_values is None:
            raise ValueError("this label space has no label mapping")
        return label_lookup_table(self.mapping, self.raw_values, 0)

    @property
    def allowed(self) -> frozenset[int]:
        """Values a prediction (or a reference in this space) may hold: 0, the scored labels, the ignored."""
        return frozenset({0, *self.names, *self.ignore})

    @property
    def allowed_raw(self) -> frozenset[int]:
        """Values a raw reference may hold (with a mapping): its raw values and the ignored ones."""
        return frozenset({*(self.raw_values or ()), *self.ignore})

    def map_reference(self, ref: np.ndarray) -> np.ndarray:
        """A raw reference in the scored space (ignored voxels become 0; values checked before)."""
        if self.ignore:
            ref = np.where(np.isin(ref, list(self.ignore)), 0, ref)
        table = np.maximum(self.lookup, 0)
        return np.take(table.astype(np.uint8 if table.max() < 256 else np.int32), ref)

    def describe(self) -> dict[str, object]:
        """The label space in words for the summary."""
        out: dict[str, object] = {"source": self.source, "scored": {str(k): v for k, v in self.names.items()}}
        if self.ignore:
            out["ignored_values"] = sorted(self.ignore)
        if self.mapping is not None:
            out["reference_mapping"] = {str(k): v for k, v in sorted(self.mapping.items())}
            out["raw_reference_values"] = sorted(self.raw_values or ())
        return out


def present_values(array: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array (a bincount when they are small and non-negative)."""
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= 1 << 16:
        return np.unique(array).astype(np.int64)
    flat, counts = array.ravel(), np.zeros(high + 1, dtype=np.int64)
    for start in range(0, flat.size, 1 << 22):  # in chunks: bincount copies its input to intp
        counts += np.bincount(flat[start : start + (1 << 22)], minlength=high + 1)
    return np.flatnonzero(counts)


def _show(values: Iterable[int], limit: int = 20) -> str:
    values = sorted(int(v) for v in values)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f" and {len(values) - limit} more" if len(values) > limit else "")


def check_values(values: np.ndarray, allowed: Iterable[int], path: Path | str, role: str, hint: str = "") -> None:
    """Raise a ValueError naming ``path`` if ``values`` holds any value outside ``allowed``."""
    unknown = sorted(set(values.tolist()) - set(allowed))
    if unknown:
        raise ValueError(
            f"{role} {path} holds label values {_show(unknown)} that the label map does not define "
            f"(allowed: {_show(allowed)}). {hint or 'Pass the right --labels, or --ignore-labels for void values.'}"
        )


def classify_reference(values: np.ndarray, space: LabelSpace) -> Literal["raw", "bundle", "either", "ambiguous"]:
    """Which label space a reference's values fit under a mapping.

    ``raw`` or ``bundle``: only that one; ``either``: both, with the same result (the mapping is the identity on
    them); ``ambiguous``: both, with different results. Values that fit neither raise (naming both spaces).
    """
    present = set(values.tolist())
    fits_raw = present <= space.allowed_raw
    fits_bundle = present <= space.allowed
    if fits_raw and fits_bundle:
        scored = present - space.ignore - {0}
        same = all(space.mapping is not None and space.mapping.get(v, 0) == v for v in scored)
        return "either" if same else "ambiguous"
    if fits_raw:
        return "raw"
    if fits_bundle:
        return "bundle"
    raise ValueError(
        f"holds label values {_show(present - space.allowed_raw - space.allowed)} that neither the raw labels "
        f"({_show(space.allowed_raw)}) nor the bundle's labels ({_show(space.allowed)}) define; pass the right "
        "--labels, or --ignore-labels for void values"
    )


def prepare_pair(pred: np.ndarray, ref: np.ndarray, space: LabelSpace, mapped: bool) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and reference in the scored space, ignored voxels set to background (values checked before).

    ``mapped``: the reference is raw and goes through the space's mapping.
    """
    ref_ignored = np.isin(ref, list(space.ignore)) if space.ignore else None
    ref = space.map_reference(ref) if mapped else ref
    if space.ignore:
        pred = np.where(np.isin(pred, list(space.ignore)) | ref_ignored, 0, pred)
        ref = np.where(ref_ignored, 0, ref)
    return pred, ref


def _resolve_bundle(name: str | Path) -> Path | None:
    """The bundle folder of ``name`` (a folder with ``configs/train.json``, or a name under bundles/), or None."""
    path = Path(name)
    if (path / "configs" / "metadata.json").is_file():
        return path
    if path.suffix or path.exists() or len(path.parts) > 1:
        return None
    from medseg.bundles import BUNDLES

    candidate = BUNDLES / str(name)
    return candidate if (candidate / "configs" / "metadata.json").is_file() else None


def read_label_map(path: str | Path) -> dict[int, str]:
    """Label value → structure name from a JSON file or a MONAI bundle (folder or name); background (0) left out.

    Accepted: a flat ``{"1": "spleen", ...}``; a MONAI bundle ``metadata.json`` (or a bundle folder holding
    ``configs/metadata.json``, or a bundle name under ``bundles/``): the first ``channel_def`` of
    ``network_data_format.outputs``; a Decathlon ``dataset.json`` (``"labels": {"0": "background", ...}``) or an
    nnU-Net v2 one (``"labels": {"spleen": 1}``).
    """
    bundle = _resolve_bundle(path)
    path = bundle / "configs" / "metadata.json" if bundle is not None else Path(path)
    if path.is_dir():
        path = path / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"label map file does not exist: {path} (give a JSON file, a bundle folder or name)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"label map {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"label map {path} must hold a JSON object")
    if "network_data_format" in data:
        outputs = data["network_data_format"].get("outputs", {})
        definitions = [o["channel_def"] for o in outputs.values() if isinstance(o, dict) and "channel_def" in o]
        if not definitions:
            raise ValueError(f"bundle metadata {path} has no channel_def in network_data_format.outputs")
        mapping = definitions[0]
        zero = str(mapping.get("0", mapping.get(0, "background"))).lower()
        if zero not in ("background", "bg"):
            raise ValueError(
                f"bundle metadata {path}: channel 0 is {zero!r}, not background, and label 0 is never scored; "
                "for Cityscapes predictions use --convention cityscapes (without --labels)"
            )
    elif "labels" in data:
        mapping = data["labels"]
        if mapping and all(isinstance(v, int) for v in mapping.values()):  # nnU-Net v2: name -> value
            mapping = {str(v): k for k, v in mapping.items()}
        elif any(isinstance(v, list) for v in mapping.values()):
            raise ValueError(f"label map {path} defines regions (label lists); only plain labels are supported")
    else:
        mapping = data
    try:
        labels = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"label map {path} must map integer label values to names, got {mapping!r}") from err
    labels.pop(0, None)
    if not labels or min(labels) < 0:
        raise ValueError(f"label map {path} gives no positive label values: {mapping!r}")
    return dict(sorted(labels.items()))


def _raw_values_of(preprocessing: str | None) -> tuple[frozenset[int], str] | None:
    """The raw label values a bundle's training transform accepts before its ``label_mapping`` (and their name)."""
    if preprocessing in ("medseg.data.btcv_transforms", "medseg.data.btcv.btcv_transforms"):
        from medseg.data.synapse import BTCV_LABELS

        return frozenset(range(len(BTCV_LABELS) + 1)), "raw BTCV labels 0..13"
    return None


def bundle_label_space(bundle: str | Path, ignore: Iterable[int] = ()) -> LabelSpace:
    """The label space of a MONAI bundle: names from ``metadata.json``, ``label_mapping`` from ``train.json``."""
    folder = _resolve_bundle(bundle)
    if folder is None:
        raise FileNotFoundError(f"no bundle {bundle!r}: give a bundle folder (with configs/metadata.json) or name")
    names = read_label_map(folder)
    train = folder / "configs" / "train.json"
    mapping = raw_values = None
    source = f"bundle {folder.name} ({folder / 'configs' / 'metadata.json'})"
    if train.is_file():
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(train))
        if "label_mapping" in parser and parser.get("label_mapping") is not None:
            mapping = {int(k): int(v) for k, v in dict(parser.get_parsed_content("label_mapping")).items()}
            known = _raw_values_of(parser.get("train#preprocessing#_target_"))
            if known is None:
                raise ValueError(
                    f"bundle {folder} maps labels through label_mapping, but medseg does not know the raw values "
                    "of its training data; score references already in its label space with --labels <metadata.json>"
                )
            raw_values, raw_name = known
            source += f"; raw references ({raw_name}) mapped through its label_mapping {mapping}"
    return LabelSpace(names, frozenset(int(v) for v in ignore), mapping, raw_values, source)


def label_space(
    labels: str | Path | None = None, num_classes: int | None = None, ignore: Iterable[int] = ()
) -> LabelSpace:
    """The label space of the command line: ``--labels`` (a label map file, a bundle folder or name) or
    ``--num-classes N`` (labels 1..N−1 named ``label_1`` ...), with ``--ignore-labels``."""
    ignore = frozenset(int(v) for v in ignore)
    if (labels is None) == (num_classes is None):
        raise ValueError("pass --labels (a label map JSON, a bundle folder or a bundle name) or --num-classes")
    if num_classes is not None:
        if num_classes < 2:
            raise ValueError(f"--num-classes must be >= 2 (background and one structure), got {num_classes}")
        names = {k: f"label_{k}" for k in range(1, num_classes)}
        return LabelSpace(names, ignore, source=f"--num-classes {num_classes}")
    if _resolve_bundle(labels) is not None:
        return bundle_label_space(labels, ignore)
    return LabelSpace(read_label_map(labels), ignore, source=f"label map {labels}")
