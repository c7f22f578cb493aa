"""medseg: segmentation losses, distance-map transforms and MONAI bundles.

Submodules load on first use (``medseg.losses``, ``medseg.transforms``, ...), so bundle configs can write
``$medseg.engine.PrepareBatchWithAux`` after a plain ``$import medseg``.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("analysis", "data", "demo", "engine", "losses", "metrics", "networks", "transforms")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"medseg.{name}")
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
