"""Property-test cases of the pixel losses (see _case.Case).

``conservative`` (family "extra", defined in medseg/losses/pixel.py) has its case here too: there is no
cases file for the extras.
"""

from ._case import Case, penalty_map

PIXEL_CASES: dict[str, Case] = {
    "ce": Case({}),
    "balanced_ce": Case({}),
    "topk": Case({}),
    "focal": Case({}),
    "dpce": Case({}, aux=penalty_map),
    "conservative": Case({}),
}
