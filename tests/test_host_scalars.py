"""Host scalars: 0-dim CPU tensors beside GPU tensors (fusec/lowering_host.py).

An optimizer's step counters stay on the CPU unless `capturable=True`, and PyTorch's
compiled-optimizer recipe puts a CPU `lr` tensor beside CUDA parameters. Without a GPU
here, the same mechanism is checked twice: a graph of fake CUDA tensors is planned
(what runs on the host, what the kernels read), and a CPU graph whose 0-dim tensors are
taken down the host path (`lowering_host.ON_CPU`) runs for real in the interpreter.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functionalize
from torch.fx.experimental.proxy_tensor import make_fx
from torch.optim.adamw import adamw

import fusec
from fusec import lowering_host
from fusec.compiler import plan_graph, rendered
from fusec.cudagraphs import refusal
from fusec.decompositions import DECOMPOSITIONS
from fusec.kernels.kinds import static_launch, static_size_args
from fusec.kernels.precompile import warmup_arguments
from fusec.launcher_text import launcher_source
from fusec.lowering import Unsupported
from fusec.options import Options
from fusec.plan import does_work
from tests.eager import assert_ran, check
from tests.optim_steps import set_grads, small_model, stepped


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
    assert "index = v_p_1.get_device()" in source  # outputs go on the GPU, not beside the scalars
    # Numbers, not pointers: a scalar's address (a 0-dim view may start anywhere) never decides
    # which binary the kernel launches.
    assert "v_lr_1.data_ptr()" not in source and "v_sub.data_ptr()" not in source
    assert "v_p_1.data_ptr()" in source


def test_torch_adamw_on_gpu_parameters_with_cpu_step_counts_and_lr_is_one_kernel():
    def step(params, grads, exp_avgs, exp_avg_sqs, steps, lr):
        adamw(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False, capturable=False,
              lr=lr, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, maximize=False, amsgrad=False)
        return ()

    shapes = [(5, 6), (5,), (3, 5), (3,)]
    with FakeTensorMode() as mode:
        tensors = [[torch.rand(s, device="cuda") for s in shapes] for _ in range(4)]
        steps, lr = [torch.tensor(1.0) for _ in shapes], torch.tensor(0.01)
        # what Dynamo traces: the step counts stay tensors (torch.optim reads them with .item() in eager)
        with mock.patch("torch.compiler.is_compiling", return_value=True):
            gm = make_fx(functionalize(step, remove="mutations_and_views"),
                         decomposition_table=DECOMPOSITIONS)(*tensors, steps, lr)
        with mode:
            record, _ = plan_graph(gm, "inference_0", Options(strict=True))
    plan = record.plan
    assert record.device == "cuda" and record.fallback is None
    assert len(plan.kernels) == 1  # every parameter and both moments, one combo launch
    # per parameter: step + 1, the bias corrections and the step size, all on the host
    assert plan.externs and all(plan.graph[s.node].host for s in plan.externs)
    assert any(plan.graph[n].host for n in plan.kernels[0].inputs)  # step sizes as scalar arguments


def test_a_graph_with_host_scalars_is_not_recorded_into_a_cuda_graph():
    record = _planned(lambda x, lr: (x * lr,), ((8,), "cuda"), ((), "cpu"))
    assert "CPU scalars (lr_1)" in refusal(record.plan, "inference_0")
    assert refusal(_planned(lambda x, y: (x * y,), ((8,), "cuda"), ((), "cuda")).plan, "inference_0") is None


def test_a_cpu_value_computed_from_a_gpu_tensor_is_refused():
    with pytest.raises(Unsupported, match=r"several devices \(cpu, cuda\): .*sum_1"):
        _planned(lambda x, s: ((x.sum().cpu() + s),), ((8,), "cuda"), ((), "cpu"))
    with pytest.raises(Unsupported, match=r"several devices \(cpu, cuda\)"):
        _planned(lambda x, y: (x * 2, y * 2), ((8,), "cuda"), ((8,), "cpu"))


@pytest.fixture
def scalars_on_host(monkeypatch):
    monkeypatch.setattr(lowering_host, "ON_CPU", True)


def test_every_kernel_kind_reads_host_scalars_as_arguments(scalars_on_host):
    x, w = torch.randn(8, 16), torch.randn(16, 4)
    half, three, tenth = torch.tensor(0.5), torch.tensor(3), torch.tensor(0.1, dtype=torch.float64)

    def fn(x, w, s, k, d):
        # a reduction's prologue and epilogue, a matmul's epilogue, a float64 scalar, a host-only value
        return (x * s).sum(-1) + k, torch.relu(x @ w * s), x * d, (s + 1) * 2

    report = check(fn, x, w, half, three, tenth, externs=0)
    assert report.stats["host_ops"] == 2  # s + 1, then * 2: on the host
    (graph,) = report.graphs
    kinds = {k.kind for k in graph.plan.kernels}
    assert {"reduction", "matmul"} <= kinds
    read = {p for k in graph.plan.kernels for p in k.params if p.startswith("s_")}
    assert len(read) == 3 and all(graph.graph[p[2:]].host for p in read), read
    sources = "".join(k.source for k in graph.plan.kernels)
    assert all(f": tl.{t}" in sources for t in ("float32", "int64", "float64"))
    # Compiling ahead of the first launch on a GPU passes each scalar a value of its type.
    planned = graph.plan.graph
    for kernel in graph.plan.kernels:
        gpu = rendered(planned, kernel, interpret=False)
        constants = static_launch(planned, gpu, False).constants
        named = warmup_arguments(planned, gpu, gpu.params, static_size_args(planned, gpu), constants, str)
        assert list(named) == list(gpu.params)
        scalars = {n: named[n] for n in gpu.params if n.startswith("s_")}
        assert all(isinstance(v, float) == (graph.graph[n[2:]].dtype != "int64") for n, v in scalars.items()), scalars


class Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)
        self.register_buffer("scale", torch.tensor(0.7))

    def forward(self, x, t):
        return (torch.tanh(self.lin(x)) * self.scale * t).sum()


def test_training_with_host_scalars_equals_eager(scalars_on_host):
    # forward and backward read the buffer and t as scalars; the loss's gradient is one too
    torch.manual_seed(0)
    eager, model = Scaled(), Scaled()
    model.load_state_dict(eager.state_dict())
    x, t = torch.randn(5, 8), torch.tensor(2.0, requires_grad=True)
    u = t.detach().clone().requires_grad_()
    compiled = fusec.compile(model)
    eager(x, t).backward()
    torch.testing.assert_close(compiled(x, u), eager(x, t.detach()))
    compiled(x, u).backward()
    torch.testing.assert_close(u.grad, t.grad)
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    report = assert_ran(compiled)
    assert [g.name.split("_")[0] for g in report.graphs] == ["forward", "backward"]
    assert all(any(n.host for n in g.graph) for g in report.graphs)


def _adam(cls, model: torch.nn.Module, foreach: bool | None, lr) -> torch.optim.Optimizer:
    # The foreach path takes a tensor lr only when capturable (the step counts then live with the
    # parameters: on a CPU, 0-dim CPU tensors all the same).
    extra = dict(capturable=True) if foreach and isinstance(lr, torch.Tensor) else {}
    return cls(model.parameters(), lr=lr, weight_decay=0.1, foreach=foreach, **extra)


def _five_steps(cls, foreach: bool | None, lr, device: str = "cpu"):
    """Eager and compiled optimizers stepped 5 times under a scheduler; the compiled step."""
    eager_model, model = small_model().to(device), small_model().to(device)
    eager_opt, opt = _adam(cls, eager_model, foreach, 0.05), _adam(cls, model, foreach, lr)
    *_, step = stepped(eager_model, model, eager_opt, opt, 5)
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for key, value in eager_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key].cpu(), value.cpu(), rtol=1e-5, atol=1e-6)
    return step


@pytest.mark.parametrize("foreach", [True, None], ids=["foreach", "default"])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_with_host_step_counts_and_lr_equals_eager(scalars_on_host, cls, foreach):
    step = _five_steps(cls, foreach, torch.tensor(0.05))
    report = assert_ran(step)
    (graph,) = report.graphs
    plan = graph.plan
    host_ops = [s for s in plan.externs if plan.graph[s.node].host]
    # the step counts' updates and bias corrections run on the host; nothing else runs through torch
    assert host_ops and all(plan.graph[s.node].host or not does_work(plan, s) for s in plan.externs)
    assert len(plan.kernels) == 1  # every parameter and both moments, one combo launch
    assert report.stats["extern_calls"] == 0 and report.stats["host_ops"] == len(host_ops)
    assert report.stats["ran"]["extern_calls"] == 0  # host ops are no launches
    assert ".item()" in graph.runtime.source
    # parameters and moments written by the kernel; the 4 step counts copied on the host
    assert (report.stats["stores_in_place"], report.stats["stores_copied"]) == (3 * 4, 4)


@pytest.mark.cuda
@pytest.mark.parametrize("foreach", [True, None], ids=["foreach", "default"])
def test_adamw_with_a_cpu_lr_tensor_on_a_gpu(foreach):
    # PyTorch's compiled-optimizer recipe: lr a CPU tensor beside CUDA parameters.
    step = _five_steps(torch.optim.AdamW, foreach, torch.tensor(0.05), device="cuda")
    report = assert_ran(step)
    for g in report.graphs:
        assert g.device == "cuda" and len(g.plan.kernels) <= 2, (g.name, [s.id for s in g.plan.steps])
        assert any(n.host for n in g.graph), "lr is read as a host scalar"
    assert report.stats["extern_calls"] == 0


@pytest.mark.cuda
@pytest.mark.parametrize("foreach", [True, None], ids=["foreach", "default"])
def test_adamw_stepped_eagerly_first_keeps_cpu_step_counts_working_on_a_gpu(foreach):
    # Stepped eagerly once, the state holds CPU step counts (capturable=False) when compiling
    # (Dynamo may move them to the parameters' GPU: either way the step equals eager's).
    model = small_model().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, foreach=foreach)
    set_grads(model, 0)
    opt.step()
    assert all(s["step"].is_cpu for s in opt.state.values())
    eager = {k: v.clone() for k, v in model.state_dict().items()}
    reference = small_model().cuda()
    reference.load_state_dict(eager)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.05, foreach=foreach)
    ref_opt.load_state_dict(opt.state_dict())
    step = fusec.compile(opt.step)
    for i in range(1, 4):
        set_grads(model, i)
        set_grads(reference, i)
        step()
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    report = assert_ran(step)
    assert report.stats["extern_calls"] == 0
    assert all(g.device == "cuda" and len(g.plan.kernels) <= 2 for g in report.graphs)
