"""Compiled optimizer steps: `fusec.compile(opt.step)` equals eager's step, with lr changing every step.

The `_foreach_*` ops split into per-tensor chains (fusec/decompositions_foreach.py) that the
horizontal pass launches together; the new parameters and states are stored by the kernels
straight into their buffers (fusec/stores.py), with no copy back.
"""

from __future__ import annotations

import pytest
import torch

import fusec
from fusec.stores import in_place, stores
from tests.eager import assert_ran, check
from tests.optim_steps import set_grads, small_model, stepped

OPTIMIZERS = {
    "sgd_momentum": (torch.optim.SGD, dict(momentum=0.9)),
    "sgd_nesterov": (torch.optim.SGD, dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam": (torch.optim.Adam, dict(betas=(0.8, 0.9))),
    "adamw": (torch.optim.AdamW, dict(weight_decay=0.1)),
    "rmsprop": (torch.optim.RMSprop, dict(momentum=0.5)),
    "adagrad": (torch.optim.Adagrad, dict(lr_decay=0.01)),
}
STEPS = 5


def _optimizer(name: str, model: torch.nn.Module, foreach: bool | None, compiled: bool) -> torch.optim.Optimizer:
    cls, kwargs = OPTIMIZERS[name]
    if compiled:
        # lr as a tensor: a new value each step is new data, not a new graph (PyTorch's
        # compiled-optimizer recipe). On a GPU Dynamo sets capturable itself; on a CPU the
        # foreach Adam family takes a tensor lr only when capturable.
        extra = dict(capturable=True) if foreach and cls in (torch.optim.Adam, torch.optim.AdamW) else {}
        return cls(model.parameters(), lr=torch.tensor(0.05), foreach=foreach, **kwargs, **extra)
    return cls(model.parameters(), lr=0.05, foreach=foreach, **kwargs)


@pytest.mark.parametrize("foreach", [True, None], ids=["foreach", "default"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_step_equals_eager_with_a_scheduler(name, foreach):
    eager_model, model = small_model(), small_model()
    eager_opt = _optimizer(name, eager_model, foreach, compiled=False)
    opt = _optimizer(name, model, foreach, compiled=True)
    graphs_after = []
    for step in stepped(eager_model, model, eager_opt, opt, STEPS):
        graphs_after.append(len(fusec.report_of(step).graphs))
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for key, value in eager_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key].float(), torch.as_tensor(value).float(), rtol=1e-5, atol=1e-6)
    # SGD's first step creates its momentum buffers (a graph of its own); lr never recompiles.
    first = 2 if name.startswith("sgd") else 1
    assert graphs_after == [1] + [first] * (STEPS - 1), graphs_after
    report = assert_ran(step)
    for g in report.graphs:
        # the per-step scalars (step counts, bias corrections, lr) and one combo for the tensors
        assert len(g.plan.kernels) <= 2 and not g.plan.externs, (g.name, [s.id for s in g.plan.steps])
    # Every step writes each parameter and state where it lives, from the kernel that computes it:
    # no copy (SGD's first step too, which creates its momentum buffers from an alias of the gradient).
    for g in report.graphs:
        assert stores(g.graph) and in_place(g.plan) == dict(stores(g.graph)), g.name
        assert ".copy_(" not in g.runtime.source
    assert report.stats["stores_copied"] == 0
    assert report.stats["stores_in_place"] == sum(len(stores(g.graph)) for g in report.graphs)


def test_compiled_step_writes_into_the_parameters_own_storage():
    model = small_model()
    opt = _optimizer("adamw", model, True, compiled=True)
    pointers = [p.data_ptr() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    set_grads(model, 0)
    step = fusec.compile(opt.step)
    step()
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    source = fusec.report_of(step).graphs[0].runtime.source
    assert "written into input" in source


def test_a_scalar_to_a_tensor_power_is_generated():
    # Adam's bias corrections, beta ** step with the step a tensor; 0 ** x and (-2) ** x stay torch's.
    steps = torch.tensor([0.0, 1.0, 2.5, 100.0, -3.0, float("nan"), float("inf")])
    check(lambda s: (torch.pow(0.9, s), 1 - torch.pow(0.999, s), torch.pow(3, s)), steps, kernels=1, externs=0)


def test_a_float_lr_is_said_to_recompile_each_new_value(caplog):
    opt = torch.optim.SGD(small_model().parameters(), lr=0.1)
    with caplog.at_level("WARNING", logger="fusec"):
        fusec.compile(opt.step)
    assert "lr=torch.tensor" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fusec"):
        fusec.compile(torch.optim.SGD(small_model().parameters(), lr=torch.tensor(0.1)).step)
    assert not caplog.text
