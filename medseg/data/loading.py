"""What the dataset loaders share: file reading, the image/label grid check, label mapping, the validation hold-out.

Every error names the file it comes from. MONAI's ``LoadImaged`` reports a truncated NIfTI as a bare ``EOFError``
and a missing file as "cannot find a suitable reader"; the transforms here check and re-raise so that the message
always carries the path, and a broken case stops the pipeline instead of being skipped.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from .splits import SPLIT_SEED, VAL_FRACTION, train_val_split

__all__ = [
    "GRID_TOLERANCE",
    "CheckAlignedd",
    "LoadArrayd",
    "MapLabelsd",
    "ReadImaged",
    "check_files_exist",
    "label_lookup_table",
    "source_file_name",
    "training_part",
]

#: How far (as a fraction of the smallest voxel spacing) an image and its label may place the same voxel.
GRID_TOLERANCE = 1e-3


def check_files_exist(datalist: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> None:
    """Raise ``FileNotFoundError`` naming the first missing file among ``item[key]`` of every item."""
    for item in datalist:
        for key in keys:
            if key in item and not Path(item[key]).is_file():
                raise FileNotFoundError(f"{key} file listed for {item.get('name', '?')} does not exist: {item[key]}")


def training_part(
    case_ids: Sequence[Hashable], part: str, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> list:
    """The ``"train"`` or ``"val"`` part of the training cases, by :func:`~medseg.data.splits.train_val_split`.

    Callers pass the training cases only, so no test case can reach the validation (model selection) part.
    ``val_fraction=0`` holds nothing out: ``"train"`` is every training case and ``"val"`` is an error.
    """
    if part not in ("train", "val"):
        raise ValueError(f"part must be 'train' or 'val', got {part!r}")
    if val_fraction == 0:
        if part == "val":
            raise ValueError("there is no validation split with val_fraction=0: pass a fraction in (0, 1)")
        return sorted(set(case_ids))
    train, val = train_val_split(case_ids, val_fraction, seed)
    return train if part == "train" else val


def source_file_name(array: Any) -> str:
    """The file an array was read from, as recorded in MONAI metadata (``"<unknown file>"`` without one)."""
    meta = getattr(array, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<unknown file>"))


class ReadImaged(MapTransform):
    """Load image files (NIfTI, PNG, ...) with MONAI's readers; a missing or unreadable file raises naming it.

    A thin wrapper over :class:`monai.transforms.LoadImage` (``image_only=True``: the result is a
    :class:`~monai.data.MetaTensor` whose ``meta`` holds the affine, ``pixdim`` and ``filename_or_obj``).

    Args:
        keys: the dictionary keys holding file paths.
        reader: a MONAI reader name or instance (``"NibabelReader"``, ``"ITKReader"``, ``PILReader(...)``);
            ``None`` lets MONAI choose by suffix.
        ensure_channel_first: add/move the channel dim first, as ``EnsureChannelFirstd`` does.
        dtype: the array dtype (``float32``, MONAI's default).
        allow_missing_keys: skip keys that are absent from the dictionary.

    Raises:
        FileNotFoundError: a path does not exist (the message names key and path).
        ValueError: a file exists but cannot be read (truncated, corrupt, wrong format); the message names it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: Any = None,
        ensure_channel_first: bool = False,
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(reader=reader, image_only=True, dtype=dtype, ensure_channel_first=ensure_channel_first)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(d[key])
            if not path.is_file():
                raise FileNotFoundError(f"{key} file does not exist: {path}")
            try:
                d[key] = self.loader(str(path))
            except Exception as err:
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ValueError(f"cannot read {key} file {path}: {type(err).__name__}: {first_line}") from err
        return d


class LoadArrayd(MapTransform):
    """Load one named array per key from ``.npz`` (numpy) or ``.h5`` / ``.hdf5`` (h5py) files.

    The TransUNet Synapse files hold the image and the label in one file (``image`` / ``label`` arrays), so
    a datalist item is ``{"image": f, "label": f}`` and each key reads the array of the same name
    (``array_names`` renames). The result is a float32 :class:`~monai.data.MetaTensor` with
    ``filename_or_obj`` in its metadata and no channel dim (add one with ``EnsureChannelFirstd``).

    Args:
        keys: the dictionary keys holding file paths.
        array_names: the array (npz key / h5 dataset) to read for each key; defaults to the key itself.
        allow_missing_keys: skip keys that are absent from the dictionary.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: the file cannot be read, is of another format, or lacks the array; the message names the
            file and the arrays it does hold.
    """

    def __init__(
        self, keys: KeysCollection, array_names: Sequence[str] | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        names = list(array_names) if array_names is not None else [str(k) for k in self.keys]
        if len(names) != len(self.keys):
            raise ValueError(f"array_names has {len(names)} entries for {len(self.keys)} keys")
        self.array_names = dict(zip(self.keys, names, strict=True))

    @staticmethod
    def read(path: Path, name: str) -> np.ndarray:
        """The array ``name`` of the npz/h5 file at ``path``."""
        if not path.is_file():
            raise FileNotFoundError(f"file does not exist: {path}")
        suffix = path.suffix.lower()
        if suffix not in (".npz", ".h5", ".hdf5"):
            raise ValueError(f"cannot read {path}: unsupported suffix {suffix!r} (expected .npz, .h5 or .hdf5)")
        try:
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    available = list(archive.files)
                    array = archive[name] if name in available else None
            else:
                with h5py.File(path, "r") as archive:
                    available = list(archive.keys())
                    array = archive[name][()] if name in available else None
        except Exception as err:  # any failure to parse the file (zip, zlib, HDF5 errors) is this file's fault
            raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from err
        if array is None:
            raise ValueError(f"{path} has no array named {name!r} (it holds {available})")
        return np.asarray(array)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(d[key])
            array = self.read(path, self.array_names[key]).astype(np.float32, copy=False)
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta={"filename_or_obj": str(path)})
        return d


def _describe(key: Hashable, array: Any) -> str:
    return f"{key} file {source_file_name(array)}"


def _largest_voxel_shift(a: np.ndarray, b: np.ndarray, spatial_shape: Sequence[int]) -> float:
    """Largest distance between the points that affines ``a`` and ``b`` give one voxel index of the grid.

    The affines are linear, so the largest shift is at a corner of the grid.
    """
    rank = a.shape[0] - 1
    corners = np.array(np.meshgrid(*[[0, max(n - 1, 0)] for n in spatial_shape], indexing="ij")).reshape(
        len(spatial_shape), -1
    )
    homogeneous = np.zeros((rank + 1, corners.shape[1]))
    homogeneous[: len(spatial_shape)] = corners
    homogeneous[rank] = 1.0
    return float(np.linalg.norm(((a - b) @ homogeneous)[:rank], axis=0).max())


class CheckAlignedd(MapTransform):
    """Refuse an image/label pair that does not share one voxel grid, naming both files.

    ``keys`` (the labels) must have the spatial shape of ``reference_key`` (the image) and, when both carry an
    affine (MONAI ``MetaTensor``), place every voxel of that grid within ``tolerance`` × the image's smallest
    voxel spacing of where the image places it (the largest shift is at a corner of the grid). The default
    tolerance, :data:`GRID_TOLERANCE` = 0.001 of a voxel, is far above the rounding of float32 NIfTI headers and
    far below any real misregistration. Arrays are channel first: ``(C, *spatial)``. Run it right after loading,
    before any resampling, so that a label drawn on another grid is never resized or resampled silently.

    Raises:
        ValueError: the shapes or the affines differ; the message names both files and both values.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "image",
        tolerance: float = GRID_TOLERANCE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if tolerance < 0:
            raise ValueError(f"tolerance must be non-negative, got {tolerance}")
        self.reference_key = reference_key
        self.tolerance = tolerance

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            reference = d[self.reference_key]
            pair = f"{_describe(self.reference_key, reference)} and {_describe(key, d[key])}"
            shapes = tuple(reference.shape[1:]), tuple(d[key].shape[1:])
            if shapes[0] != shapes[1]:
                raise ValueError(
                    f"{pair} are not on one voxel grid: spatial shapes {shapes[0]} and {shapes[1]} differ. "
                    "A label must be drawn on its image's grid; medseg does not resize or resample it silently: "
                    "export the label again from the image, or resample it onto the image (nearest neighbour)"
                )
            if isinstance(reference, MetaTensor) and isinstance(d[key], MetaTensor):
                self._check_affines(pair, reference.affine, d[key].affine, shapes[0])
        return d

    def _check_affines(self, pair: str, reference: torch.Tensor, other: torch.Tensor, shape: tuple) -> None:
        a, b = (np.asarray(x.detach().cpu(), dtype=np.float64) for x in (reference, other))
        if a.shape != b.shape:
            raise ValueError(f"{pair} are not on one voxel grid: affines of shapes {a.shape} and {b.shape}")
        spacing = np.linalg.norm(a[:-1, :-1], axis=0)[: len(shape)]
        allowed = self.tolerance * float(spacing.min())
        shift = _largest_voxel_shift(a, b, shape)
        if shift > allowed:
            raise ValueError(
                f"{pair} are not on one voxel grid: their affines place a voxel {shift:.4g} mm apart (allowed: "
                f"{allowed:.3g} mm, {self.tolerance} of the smallest voxel spacing). Image affine "
                f"{np.round(a, 4).tolist()}, label affine {np.round(b, 4).tolist()}. Fix the label's header if "
                "only it is wrong, or resample the label onto the image (nearest neighbour)"
            )


def label_lookup_table(mapping: Mapping[int, int], source_values: Iterable[int], fill_value: int) -> np.ndarray:
    """Lookup table ``lut[v]`` for label values ``0..max(source_values)``; ``-1`` marks values not allowed.

    Values of ``source_values`` missing from ``mapping`` map to ``fill_value``.
    """
    allowed = sorted({int(v) for v in source_values})
    if not allowed or allowed[0] < 0:
        raise ValueError(f"source_values must be non-negative label values, got {allowed}")
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ValueError(f"mapping has source values {unknown} that are not in source_values")
    if fill_value < 0 or any(v < 0 for v in mapping.values()):
        raise ValueError("mapped values and fill_value must be non-negative (-1 marks unknown values)")
    lut = np.full(allowed[-1] + 1, -1, dtype=np.int64)
    lut[allowed] = fill_value
    for source, target in mapping.items():
        lut[int(source)] = int(target)
    return lut


class MapLabelsd(MapTransform):
    """Map label values through a table, and refuse values the dataset does not define.

    ``out = mapping[v]`` for ``v`` in ``mapping``; ``fill_value`` for the other values of ``source_values``;
    any value outside ``source_values`` (or a non-integer value) raises a ``ValueError`` naming the file and
    the offending values, so that a corrupt or foreign label file is never trained on silently.
    Used for BTCV → Synapse (13 organs → 8, others → 0), Cityscapes labelIds → trainIds (others → 255),
    and as a plain check (identity mapping) for already-mapped labels.

    Args:
        keys: the label keys.
        mapping: source value → target value.
        source_values: every value a label file may hold.
        fill_value: the target of source values that ``mapping`` does not list.
        allow_missing_keys: skip keys that are absent from the dictionary.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mapping: Mapping[int, int],
        source_values: Iterable[int],
        fill_value: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mapping = {int(k): int(v) for k, v in mapping.items()}
        self.lut = label_lookup_table(self.mapping, source_values, fill_value)

    def map_array(self, labels: Any, source: str) -> Any:
        """Map one label array (numpy or torch, any shape); ``source`` names its file in errors."""
        values = labels.as_tensor() if isinstance(labels, MetaTensor) else torch.tensor(np.asarray(labels))
        if values.is_floating_point() and not torch.equal(values, values.round()):
            raise ValueError(f"label file {source} holds non-integer values; is it an image?")
        indices = values.long()
        present = torch.unique(indices)
        out_of_table = present[(present < 0) | (present >= len(self.lut))]
        in_table = present[(present >= 0) & (present < len(self.lut))]
        unknown = torch.cat([out_of_table, in_table[torch.from_numpy(self.lut)[in_table] < 0]])
        if unknown.numel():
            allowed = np.flatnonzero(self.lut >= 0).tolist()
            raise ValueError(
                f"label file {source} holds unknown values {sorted(unknown.tolist())} (allowed: {allowed})"
            )
        mapped = torch.from_numpy(self.lut).to(indices.device)[indices].to(values.dtype)
        if isinstance(labels, MetaTensor):
            out = MetaTensor(mapped, meta=labels.meta, applied_operations=labels.applied_operations)
            out.spatial_ndim = labels.spatial_ndim  # MONAI would infer 3 from a 2D image's 4x4 affine
            return out
        if isinstance(labels, np.ndarray):
            return mapped.numpy()
        return mapped

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.map_array(d[key], source_file_name(d[key]))
        return d


def output_keys(transform: Any) -> list[str]:
    """The keys a dictionary transform writes (``output_key`` of DistanceMapd, else its ``keys``)."""
    out = getattr(transform, "output_keys", None)
    if out is None:
        out = getattr(transform, "keys", ())
    return [out] if isinstance(out, str) else list(out)
