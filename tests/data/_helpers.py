"""Helpers shared by the data tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def error_chain(error: BaseException) -> list[BaseException]:
    """An error and every error it was raised from (MONAI's Compose wraps the original in a RuntimeError)."""
    chain = []
    current: BaseException | None = error
    while current is not None:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


@contextmanager
def raises_naming(error_type: type[BaseException], *texts: str) -> Iterator[None]:
    """Expect ``error_type``, raised directly or wrapped by a MONAI Compose, with all ``texts`` in its message."""
    with pytest.raises(Exception) as info:  # the type is checked along the chain below
        yield
    matching = [e for e in error_chain(info.value) if isinstance(e, error_type)]
    assert matching, f"expected {error_type.__name__}, got {[type(e).__name__ for e in error_chain(info.value)]}"
    assert any(all(t in str(e) for t in texts) for e in matching), f"{texts!r} not in {[str(e) for e in matching]}"


def copy_dataset(source: Path, target: Path) -> Path:
    """A private copy of a session dataset, for tests that break files."""
    shutil.copytree(source, target)
    return target
