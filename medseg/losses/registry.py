"""Loss registry: every medseg loss by name, with its family, reference and the aux keys it reads."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

FAMILIES = ("pixel", "region", "boundary", "compound", "extra")


@dataclass(frozen=True)
class LossInfo:
    """One registry entry."""

    name: str
    cls: type[nn.Module]
    family: str
    reference: str
    aux_keys: tuple[str, ...]


_REGISTRY: dict[str, LossInfo] = {}
_NAME_OF_CLASS: dict[type, str] = {}


def register(name: str, family: str, reference: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a loss to the registry under ``name``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown loss family {family!r}; choose one of {FAMILIES}")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"loss name {name!r} is already registered to {_REGISTRY[name].cls.__name__}")
        _REGISTRY[name] = LossInfo(name, cls, family, reference, tuple(getattr(cls, "aux_keys", ())))
        _NAME_OF_CLASS[cls] = name
        return cls

    return decorator


def _lookup(name: str) -> LossInfo:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown loss {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def registered_name(cls: type) -> str | None:
    """The name ``cls`` is registered under, or ``None`` (e.g. a subclass the user wrote)."""
    return _NAME_OF_CLASS.get(cls)


def get_loss(name: str, **kwargs) -> nn.Module:
    """Build the loss registered as ``name`` with ``kwargs``.

    Raises:
        ValueError: for an unknown name, listing the closest registered names.
    """
    return _lookup(name).cls(**kwargs)


def loss_info(name: str) -> LossInfo:
    """The registry entry of ``name`` (raises like :func:`get_loss` for unknown names)."""
    return _lookup(name)


def list_losses(family: str | None = None) -> list[LossInfo]:
    """All registered losses (optionally of one family), sorted by family then name."""
    infos = [i for i in _REGISTRY.values() if family is None or i.family == family]
    return sorted(infos, key=lambda i: (FAMILIES.index(i.family), i.name))
