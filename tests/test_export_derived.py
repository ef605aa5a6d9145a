"""A dynamic package whose symbol appears only inside a derived dim (`Dim` arithmetic such as
`2*batch`): the runner solves the symbol from the dim, runs fusec's kernels at every size of that
form, and refuses, naming the input, the dim and the form, a size no whole symbol gives."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.export import Dim

import fusec
from fusec.export_sizes import _expression, size_at, solve
from fusec.sizes import linear


def pairs(x: torch.Tensor) -> torch.Tensor:
    """Rows taken two by two: only `2*batch` is an input dim, `batch` alone is none."""
    return torch.softmax(x, -1).reshape(x.shape[0] // 2, 2, x.shape[1]).sum(1)


def halves(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.reshape(y.shape[0], 2, y.shape[1]).amax(1) * torch.sigmoid(y)


def _ran_everything(runner: Any, calls: int) -> None:
    graph = runner.report().graphs[0]
    assert graph.plan is not None and graph.fallback is None, graph.fallback
    counts = graph.runtime.counts
    assert counts.kernels == dict.fromkeys((k.id for k in graph.plan.kernels), calls)
    assert counts.calls == calls and counts.through_torch == 0


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    folder = tmp_path_factory.mktemp("derived")
    batch = Dim("batch", min=2, max=16)
    one = fusec.export(pairs, torch.randn(8, 32), path=folder / "pairs.fusec", dynamic_shapes={"x": {0: 2 * batch}})
    two = fusec.export(halves, torch.randn(8, 32), torch.randn(4, 32), path=folder / "halves.fusec",
                       dynamic_shapes={"x": {0: 2 * batch}, "y": {0: batch}})
    return one, two


def test_symbol_only_in_a_derived_dim_is_solved_at_every_size(derived):
    exported, _ = derived
    (symbol, info), = exported.manifest["symbols"].items()
    assert info == {"dim": "batch", "min": 2, "max": 16}
    assert exported.manifest["placeholders"][0]["shape"] == [f"2*{symbol}", 32]
    runner = fusec.load(exported.path)
    sizes = (4, 6, 14, 32)
    for rows in sizes:
        x = torch.randn(rows, 32)
        got = runner(x)
        assert got.shape == (rows // 2, 32)
        torch.testing.assert_close(got, pairs(x))
    _ran_everything(runner, len(sizes))


def test_size_of_another_form_or_range_is_refused_with_the_dim_named(derived):
    runner = fusec.load(derived[0].path)
    with pytest.raises(ValueError, match=r"input 1 \(x\) dim 0 is 7, which is no 2\*batch \(2\*s\d+\) for a whole "
                                         r"batch \(s\d+\): give a size of that form"):
        runner(torch.randn(7, 32))
    with pytest.raises(ValueError, match=r"input 1 \(x\) dim 0 \(34 = 2\*batch \(2\*s\d+\)\) is 17, outside "
                                         r"batch \(s\d+\)'s range \[2, 16\]"):
        runner(torch.randn(34, 32))


def test_derived_dim_beside_its_root_must_agree(derived):
    _, exported = derived
    runner = fusec.load(exported.path)
    x, y = torch.randn(12, 32), torch.randn(6, 32)
    torch.testing.assert_close(runner(x, y), halves(x, y))
    _ran_everything(runner, 1)
    with pytest.raises(ValueError, match=r"input 1 \(x\) dim 0 is 8 but it is 2\*batch \(2\*s\d+\) in the exported "
                                         r"program, which is 6 at this call \(batch \(s\d+\) = 3 from input 2 \(y\) "
                                         r"dim 0\)"):
        runner(torch.randn(8, 32), torch.randn(3, 32))


@pytest.mark.parametrize(("text", "size", "expected"), [
    ("2*s0", 6, ("s0", 3)), ("2*s0", 7, ("s0", None)), ("s0 + 1", 5, ("s0", 4)), ("3*s0 - 2", 7, ("s0", 3)),
    ("s0*s1", 6, None), ("s0**2", 9, None), ("s0", 5, ("s0", 5)),
])
def test_solve_linear_dims_only(text, size, expected):
    assert solve(text, size) == expected
    assert linear(7) is None


@pytest.mark.parametrize("text", ["s0", "2*s0", "3*s0 - 2", "s0*s1 + 4", "s0**2", "floor(s0/3)", "Mod(s1, 4)",
                                  "Max(s0, s1)"])
def test_a_size_at_a_call_is_computed_in_python_as_sympy_computes_it(text):
    for values in ({"s0": 5, "s1": 7}, {"s0": 64, "s1": 3}):
        expr = _expression(text)
        assert size_at(text, values) == int(expr.xreplace({s: values[s.name] for s in expr.free_symbols}))
