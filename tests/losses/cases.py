"""How each registered loss is exercised by the shared property tests (tests/losses/test_properties.py).

Every registered loss must have an entry: a loss without one fails ``test_every_loss_has_a_case``.
Each family keeps its entries in its own file (cases_<family>.py); this module merges them.
"""

from ._case import Case
from .cases_boundary import BOUNDARY_CASES
from .cases_compound import COMPOUND_CASES
from .cases_pixel import PIXEL_CASES
from .cases_region import REGION_CASES

CASES: dict[str, Case] = {**PIXEL_CASES, **REGION_CASES, **BOUNDARY_CASES, **COMPOUND_CASES}

__all__ = ["CASES", "Case"]
