"""The kernel kinds table: every kind has its rules, and a rendered kernel says as data what its
launch passes (extras, size symbols, a second entry), which the source it was rendered to agrees with."""

from __future__ import annotations

import json
import re

import torch
import torch.nn.functional as F

import fusec
from fusec.kernels.kinds import KINDS, ROWS_VARIANT
from fusec.kernels.signature import extra_params
from fusec.plan import KernelKind, LaunchExtra

_ENTRY = re.compile(r"^def (\w+)\((.*?)\):", re.M | re.S)


def entries(source: str) -> dict[str, tuple[str, ...]]:
    """Each `def` of a kernel module and its parameter names (the check reads what the renderer wrote)."""
    return {m.group(1): tuple(p.split(":")[0].strip() for p in m.group(2).split(","))
            for m in _ENTRY.finditer(source)}


def test_every_kind_has_its_rules():
    assert set(KINDS) == set(KernelKind)
    assert [k for k, rules in KINDS.items() if rules.render_rows is not None] == [KernelKind.REDUCTION]


def test_kinds_print_and_serialize_as_their_value():
    kind = KernelKind.COMBO
    assert (str(kind), f"{kind}", json.dumps(kind), json.dumps({"kind": kind})) == (
        "combo", "combo", '"combo"', '{"kind": "combo"}')
    assert kind == "combo" and KernelKind("combo") is kind
    assert str(LaunchExtra.SEED) == "seed"


def test_rendered_parameters_and_extras_match_the_source():
    # A gather (bounds flag), dropout (seed) and a batch mean (partials and ticket).
    def fn(table, idx, x, target):
        picked = table[idx] * 2
        return F.dropout(picked, 0.5, training=True), F.cross_entropy(x, target)

    args = (torch.randn(10, 8), torch.tensor([1, 3, 9]), torch.randn(64, 96), torch.randint(0, 96, (64,)))
    report = fusec.inspect(fn, *args)
    kernels = {k.kind: k for k in report.kernels}
    gather, total = kernels[KernelKind.POINTWISE], kernels[KernelKind.REDUCTION]
    assert gather.extras == (LaunchExtra.BAD_INDEX, LaunchExtra.SEED)
    assert total.extras == (LaunchExtra.BAD_INDEX, LaunchExtra.PARTIALS) and total.finals  # target: a gather
    for kernel in (gather, total):
        assert entries(kernel.source)[kernel.fn_name] == kernel.params
        buffers = len(kernel.inputs) + len(kernel.outputs)
        extras = extra_params(kernel.extras, kernel.finals)
        assert kernel.params[buffers:buffers + len(extras)] == tuple(extras)
        assert kernel.symbols == () and kernel.rows_fn == ""
    assert {k["kind"] for k in json.loads(report.to_json())["kernels"]} == {"pointwise", "reduction"}


def test_symbolic_rows_get_a_second_entry_named_in_the_kernel():
    x = torch.randn(4, 37)
    torch._dynamo.reset()
    report = fusec.inspect(lambda t: torch.softmax(t, -1), x, options={"dynamic": True})
    (kernel,) = report.kernels
    assert kernel.kind is KernelKind.REDUCTION and kernel.rows_fn == kernel.fn_name + ROWS_VARIANT
    defs = entries(kernel.source)
    assert set(defs) == {kernel.fn_name, kernel.rows_fn}
    assert defs[kernel.fn_name] == defs[kernel.rows_fn] == kernel.params
    assert kernel.symbols and set(kernel.symbols) <= set(kernel.params)
    assert not kernel.persistent  # the looped entry serves any length; the other, rows that fit a block
