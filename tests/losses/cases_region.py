"""Property-test cases of the region losses (see _case.Case)."""

from ._case import Case, penalty_map  # noqa: F401

REGION_CASES: dict[str, Case] = {
    "dice": Case({"softmax": True}),
}
