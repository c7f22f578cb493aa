"""Property-test cases of the pixel losses (see _case.Case)."""

from ._case import Case, penalty_map  # noqa: F401

PIXEL_CASES: dict[str, Case] = {
    "ce": Case({}),
}
