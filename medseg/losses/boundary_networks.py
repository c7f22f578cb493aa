"""Boundary losses that need more than a distance map: an extra network, extra output channels or decoder features."""

from __future__ import annotations

__all__: list[str] = []
