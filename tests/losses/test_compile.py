"""Every registered loss runs under ``torch.compile`` and gives its eager value and gradient.

The graph breaks of each loss (docs/benchmarks.md, "torch.compile graph breaks") are measured on the same inputs
with ``torch._dynamo.explain``: ``python -m tests.losses.test_compile`` prints that table.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from medseg.losses import get_loss, list_losses

from .cases import CASES
from .test_properties import one_hot, random_batch

BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
#: tracing these takes ~10 s on 2 cores: the prediction's distance maps break the graph per item and class
SLOW = {"hausdorff_dt", "shape_aware"}


def compile_inputs(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """The loss with its property-test arguments, and one float32 item (3 classes, 6 x 6) with its aux maps."""
    case = CASES[name]
    logits, labels = random_batch(case, spatial=(6, 6), batch=1, dtype=torch.float32)
    aux = case.aux(one_hot(labels, case.num_classes, logits.dtype), labels) if case.aux else {}
    return get_loss(name, **case.kwargs), (logits, labels), aux


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(CASES)])
def test_compiled_loss_equals_eager(name):
    loss, (logits, labels), aux = compile_inputs(name)
    x = logits.clone().requires_grad_(True)
    eager = loss(x, labels, **aux)
    eager.backward()
    eager_grad = x.grad.clone()
    x.grad = None
    torch._dynamo.reset()  # each loss from a clean cache: no recompile limit carried over from the last one
    counter = CompileCounter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on the graph breaks
        compiled = torch.compile(loss, backend=counter)(x, labels, **aux)
    compiled.backward()
    assert counter.frame_count >= 1, "nothing was compiled"
    assert torch.allclose(compiled, eager, rtol=1e-6, atol=1e-7)
    assert torch.allclose(x.grad, eager_grad, rtol=1e-5, atol=1e-7)


def test_every_registered_loss_has_a_graph_break_row():
    section = BENCHMARKS.read_text().split("## torch.compile graph breaks", 1)[1]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert documented == {info.name for info in list_losses()}


def graph_break_table() -> str:
    """The markdown table of docs/benchmarks.md: graphs, breaks and the distinct break reasons of each loss."""
    rows = ["| loss | graphs | breaks | reasons |", "|:--|--:|--:|:--|"]
    for name in sorted(CASES):
        loss, inputs, aux = compile_inputs(name)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(loss)(*inputs, **aux)
        reasons = sorted({str(reason.reason).splitlines()[0].strip() for reason in explained.break_reasons})
        rows.append(f"| `{name}` | {explained.graph_count} | {explained.graph_break_count} | {'; '.join(reasons)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(graph_break_table())
