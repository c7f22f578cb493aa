"""Every medseg loss class named like a ``monai.losses`` class takes MONAI's arguments: each one, in MONAI's order
(so positional calls mean the same), with MONAI's default; medseg's own arguments come after them."""

from __future__ import annotations

import inspect

import monai.losses
import pytest

import medseg.losses

#: every class medseg.losses exports under a name monai.losses also has
SHARED = sorted(
    name
    for name in dir(medseg.losses)
    if inspect.isclass(getattr(medseg.losses, name)) and inspect.isclass(getattr(monai.losses, name, None))
)


def parameters(cls: type) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]


def test_the_shared_names():
    assert SHARED == [
        "BoundaryLoss",
        "DiceCELoss",
        "DiceFocalLoss",
        "DiceLoss",
        "FocalLoss",
        "GeneralizedDiceLoss",
        "GeneralizedWassersteinDiceLoss",
        "HausdorffDTLoss",
        "LogHausdorffDTLoss",
        "TverskyLoss",
    ]


@pytest.mark.parametrize("name", SHARED)
def test_monai_arguments_first_in_order_with_monai_defaults(name):
    ours, theirs = parameters(getattr(medseg.losses, name)), parameters(getattr(monai.losses, name))
    assert [p.name for p in ours[: len(theirs)]] == [p.name for p in theirs], "MONAI's arguments, in MONAI's order"
    for mine, monais in zip(ours, theirs, strict=False):
        # no default differs (no such row in docs/monai_differences.md); MONAI's enum defaults
        # (LossReduction.MEAN, Weight.SQUARE) are str enums equal to medseg's strings
        assert mine.default == monais.default, f"{name}({mine.name}=...): {mine.default!r} vs MONAI {monais.default!r}"
        assert mine.kind == monais.kind
    for extra in ours[len(theirs) :]:
        assert extra.default is not inspect.Parameter.empty, f"{name}: medseg's own {extra.name} needs a default"
