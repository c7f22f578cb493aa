"""Property-test cases of the region losses (see _case.Case)."""

from ._case import Case, penalty_map  # noqa: F401

REGION_CASES: dict[str, Case] = {
    # Lovász losses are piecewise linear in the errors: the slope changes where two sorted errors tie (and, for the
    # hinge, where an error crosses 0). gradcheck's step must not cross one. In the gradcheck batch (seed 0, 2x4x4,
    # 3 classes) the closest softmax errors of a class are 2.6e-4 apart and a logit step eps moves each by at most
    # eps/4; the closest hinge errors are 7.8e-4 apart and 1.1e-2 from 0, moved by eps. eps=1e-6 stays clear of every
    # tie by a factor of more than 300 (checked in test_lovasz.py::test_gradcheck_eps_stays_between_ties).
    "lovasz": Case({}, gradcheck_eps=1e-6),
    "lovasz_hinge": Case({}, gradcheck_eps=1e-6),
    # the property patches (4x4 to 8x8) are too small to pool by 4 and still hold a 3x3 neighbourhood
    "rmi": Case({"pool_size": 1}),
    "dice": Case({"softmax": True}),
    "generalized_dice": Case({"softmax": True}),
    "penalty_gdl": Case({"softmax": True}),
    "log_cosh_dice": Case({"softmax": True}),
    # class distances for the 3 classes of the property batches: background (class 0) farthest from both others
    "gwdl": Case({"dist_matrix": [[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]}),
    "jaccard": Case({"softmax": True}),
    "tversky": Case({"softmax": True}),
    "focal_tversky": Case({"softmax": True}),
    "asym_similarity": Case({"softmax": True}),
    "sens_spec": Case({"softmax": True}),
    "t_loss": Case({"softmax": True}),
}
