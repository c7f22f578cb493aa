"""Find the label files of a folder and pair predictions with references by case id, across naming schemes.

A case id is a file name without its extension, without one known role suffix (``_seg``, ``_pred``,
``_prediction``, ``_gt``, ``_label``, ``_labels``, ``_mask``; ``_0000`` after a digit, nnU-Net's channel) and
without one known prefix directly followed by a digit (``img``, ``image``, ``label``, ``labels``, ``seg``,
``pred``, ``gt``, ``mask``, ``case``, each optionally followed by ``_`` or ``-``). So ``img0007_seg.nii.gz``
(MONAI's ``SaveImaged`` after the BTCV image ``img0007.nii.gz``), ``label0007.nii.gz`` (BTCV),
``case0007.nii.gz``, ``case0007_pred.nii.gz`` and ``case0007_gt.nii.gz`` (TransUNet) all give ``0007``;
``la_007.nii.gz`` (nnU-Net, Decathlon) stays ``la_007``. Two files of one folder with one case id are an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SUPPORTED_SUFFIXES", "case_id", "find_cases", "strip_extension"]

#: File extensions read as label maps.
SUPPORTED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png")

_ROLE_SUFFIX = re.compile(r"(?:[_-](?:seg|pred|prediction|gt|label|labels|mask)|(?<=\d)_0000)$", re.IGNORECASE)
_PREFIX = re.compile(r"^(?:img|image|labels|label|seg|pred|gt|mask|case)[_-]?(?=\d)", re.IGNORECASE)


def strip_extension(name: str) -> str:
    """``name`` without a supported extension (:data:`SUPPORTED_SUFFIXES`), or unchanged."""
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_id(name: str) -> str:
    """The case id of a file name (or a stem): extension, one role suffix and one prefix removed (module doc).

    >>> case_id("img0007_seg.nii.gz"), case_id("label0007.nii.gz"), case_id("la_007.nii.gz")
    ('0007', '0007', 'la_007')
    """
    stem = _ROLE_SUFFIX.sub("", strip_extension(name))
    return _PREFIX.sub("", stem) or stem


def _glob_tail(pattern: str) -> str:
    if "*" not in pattern:
        raise ValueError(f"glob {pattern!r} must contain a '*' standing for the case id")
    return pattern[pattern.rindex("*") + 1 :]


def find_cases(folder: str | Path, glob: str | Sequence[str] | None = None) -> dict[str, Path]:
    """Case id → file for the files under ``folder`` (recursive) matching ``glob`` (default: any supported suffix).

    With a glob, the text after its last ``*`` is cut off first (``*_gt.nii.gz`` gives ``case0001`` for
    ``case0001_gt.nii.gz``), then :func:`case_id` applies. Several globs may be given.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: a glob has no ``*``, or two files give the same case id (both named, with the fix).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder does not exist: {folder}")
    if glob is None:
        patterns: Sequence[str] = [f"*{suffix}" for suffix in SUPPORTED_SUFFIXES]
    else:
        patterns = [glob] if isinstance(glob, str) else list(glob)
    cases: dict[str, Path] = {}
    for pattern in patterns:
        tail = _glob_tail(pattern)
        for path in sorted(p for p in folder.rglob(pattern) if p.is_file()):
            case = case_id(path.name[: len(path.name) - len(tail)] if tail else path.name)
            if case in cases and cases[case] != path:
                raise ValueError(
                    f"case {case!r} matches two files under {folder}: {cases[case]} and {path}; keep one, or "
                    "select the files with --pred-glob/--ref-glob (e.g. --ref-glob '*_gt.nii.gz')"
                )
            cases[case] = path
    return cases
