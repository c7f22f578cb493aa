"""Experiment planning for a user dataset, after nnU-Net: fingerprint → plan.json → the ``generic_3d`` bundle.

``medseg plan DATASET`` (:func:`plan_dataset`) reads an nnU-Net v2 raw or MSD folder, extracts its fingerprint
(:mod:`.fingerprint`), chooses spacing, normalisation, patch, batch and network (:mod:`.plan`, :mod:`.topology`) and
writes ``plan.json``; docs/own_dataset.md describes every field.
"""

from .fingerprint import extract_fingerprint
from .plan import (
    ANISOTROPY_THRESHOLD,
    CPU_MEMORY_GB,
    GPU_MEMORY_GB,
    ensure_plan,
    load_plan,
    make_plan,
    normalization_scheme,
    plan_dataset,
    plan_summary,
    target_spacing,
    write_plan,
)
from .topology import configure, estimate_memory, pooling

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "CPU_MEMORY_GB",
    "GPU_MEMORY_GB",
    "configure",
    "ensure_plan",
    "estimate_memory",
    "extract_fingerprint",
    "load_plan",
    "make_plan",
    "normalization_scheme",
    "plan_dataset",
    "plan_summary",
    "pooling",
    "target_spacing",
    "write_plan",
]
