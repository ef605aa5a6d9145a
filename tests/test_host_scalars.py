"""Host scalars: 0-dim CPU tensors beside GPU tensors (fusec/lowering_host.py).

An optimizer's step counters stay on the CPU unless `capturable=True`, and PyTorch's
compiled-optimizer recipe puts a CPU `lr` tensor beside CUDA parameters. Without a GPU
here, the same mechanism is checked twice: a graph of fake CUDA tensors is planned
(what runs on the host, what the kernels read), and a CPU graph whose 0-dim tensors are
taken down the host path (`lowering_host.ON_CPU`) runs for real in the interpreter.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functionalize
from torch.fx.experimental.proxy_tensor import make_fx

import fusec
from fusec import lowering_host
from fusec.compiler import plan_graph
from fusec.cudagraphs import refusal
from fusec.decompositions import DECOMPOSITIONS
from fusec.launcher import launcher_source
from fusec.lowering import Unsupported
from fusec.options import Options
from fusec.plan import does_work
from tests.eager import assert_ran


def adam_like(p, g, m, step, lr):
    """Adam's update with its step count and lr as tensors, as torch.optim writes it."""
    step.add_(1)
    correction = 1 - 0.9 ** step
    m.mul_(0.9).add_(g, alpha=0.1)
    p.sub_(m * lr / correction)
    return ()


def _planned(fn, *shapes_and_devices, name="inference_0"):
    """fn traced on fake tensors of these (shape, device), functionalized, and planned."""
    with FakeTensorMode() as mode:
        args = [torch.randn(shape, device=device) if shape else torch.tensor(0.5, device=device)
                for shape, device in shapes_and_devices]
        gm = make_fx(functionalize(fn, remove="mutations_and_views"), decomposition_table=DECOMPOSITIONS)(*args)
        with mode:
            record, _ = plan_graph(gm, name, Options(strict=True))
    return record


GPU_ADAM = [((4, 3), "cuda"), ((4, 3), "cuda"), ((4, 3), "cuda"), ((), "cpu"), ((), "cpu")]


def test_a_gpu_graph_keeps_its_cpu_scalars_on_the_host():
    record = _planned(adam_like, *GPU_ADAM)
    plan, graph = record.plan, record.graph
    assert record.device == "cuda" and record.fallback is None
    host_ops = [s for s in plan.externs if graph[s.node].host]
    # step + 1, 0.9 ** step, 1 - that: torch on the CPU, no launch
    assert [graph[s.node].target for s in host_ops] == ["aten.add.Tensor", "aten.pow.Scalar", "aten.sub.Tensor"]
    assert host_ops == plan.externs and not any(does_work(plan, s) for s in host_ops)
    # one kernel updates m and p, reading lr and the correction as scalar arguments
    (kernel,) = plan.kernels
    assert [p for p in kernel.params if p.startswith("s_")] == ["s_lr_1", "s_sub"]
    assert "s_lr_1: tl.float32" in kernel.source and "do_not_specialize=['s_lr_1', 's_sub']" in kernel.source
    source = launcher_source(plan)
    assert "v_lr_1.item(), v_sub.item()" in source
    assert "v_step_1.copy_(v_add)" in source  # the step count's new value, stored on the host
    assert "device = v_p_1.device" in source  # outputs go on the GPU, not beside the scalars


def test_a_graph_with_host_scalars_is_not_recorded_into_a_cuda_graph():
    record = _planned(lambda x, lr: (x * lr,), ((8,), "cuda"), ((), "cpu"))
    assert "CPU scalars (lr_1)" in refusal(record.plan, "inference_0")
    assert refusal(_planned(lambda x, y: (x * y,), ((8,), "cuda"), ((), "cuda")).plan, "inference_0") is None


@pytest.mark.fallback_expected
def test_a_cpu_value_computed_from_a_gpu_tensor_is_refused():
    with pytest.raises(Unsupported, match=r"several devices \(cpu, cuda\): .*sum_1"):
        _planned(lambda x, s: ((x.sum().cpu() + s),), ((8,), "cuda"), ((), "cpu"))
    with pytest.raises(Unsupported, match=r"several devices \(cpu, cuda\)"):
        _planned(lambda x, y: (x * 2, y * 2), ((8,), "cuda"), ((8,), "cpu"))


@pytest.fixture
def scalars_on_host(monkeypatch):
    monkeypatch.setattr(lowering_host, "ON_CPU", True)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _grads(model: torch.nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_with_host_step_counts_and_lr_equals_eager(scalars_on_host, cls):
    # capturable=False keeps each step count a 0-dim CPU tensor; lr a 0-dim CPU tensor too.
    eager_model, model = _model(), _model()
    eager_opt = cls(eager_model.parameters(), lr=0.05, weight_decay=0.1, foreach=False)
    opt = cls(model.parameters(), lr=torch.tensor(0.05), weight_decay=0.1, foreach=False)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7) for o in (eager_opt, opt)]
    step = fusec.compile(opt.step)
    for i in range(5):
        _grads(eager_model, i)
        _grads(model, i)
        eager_opt.step()
        step()
        for scheduler in schedulers:
            scheduler.step()
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for key, value in eager_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-5, atol=1e-6)
    report = assert_ran(step)
    (graph,) = report.graphs
    plan = graph.plan
    host_ops = [s for s in plan.externs if plan.graph[s.node].host]
    assert host_ops and host_ops == [s for s in plan.externs if does_work(plan, s) or plan.graph[s.node].host]
    assert len(plan.kernels) == 1  # every parameter and moment, one combo launch
    assert report.stats["extern_calls"] == 0 and report.stats["host_ops"] == len(host_ops)
    assert ".item()" in graph.runtime.source
