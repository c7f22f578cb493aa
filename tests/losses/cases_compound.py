"""Property-test cases of the compound losses (see _case.Case)."""

from ._case import Case, penalty_map  # noqa: F401

COMPOUND_CASES: dict[str, Case] = {}
