"""Property-test cases of the boundary losses (see _case.Case)."""

from ._case import Case, penalty_map  # noqa: F401

BOUNDARY_CASES: dict[str, Case] = {}
