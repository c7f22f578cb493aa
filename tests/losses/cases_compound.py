"""Property-test cases of the compound losses (see _case.Case)."""

from ._case import Case, penalty_map  # noqa: F401

COMPOUND_CASES: dict[str, Case] = {
    "dice_ce": Case({"softmax": True}),
    "dice_focal": Case({"softmax": True}),
    "combo": Case({"softmax": True}),
    "exp_log": Case({"softmax": True}),
    "unified_focal": Case({"softmax": True}),
}
