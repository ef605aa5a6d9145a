"""Independent kernels: stream assignment on real plans, combo launches, results unchanged."""

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
from fusec.examples import build
from fusec.plan import step_dag
from tests.eager import assert_ran


class Heads(nn.Module):
    """Several independent small MLP heads on one input (batch 1)."""

    def __init__(self, n=4, width=32):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 8))
                                   for _ in range(n))

    def forward(self, x):
        return torch.cat([torch.tanh(h(x)) for h in self.heads], dim=-1)


def covered(plan) -> bool:
    """Every cross-stream dependency is ordered by a chain of stream order and waits."""
    dag = step_dag(plan)
    steps = [s for s in plan.steps if s.id in dag]
    happens = nx.DiGraph()
    last_on: dict[int, str] = {}
    for step in steps:
        happens.add_node(step.id)
        if step.stream in last_on:
            happens.add_edge(last_on[step.stream], step.id)
        last_on[step.stream] = step.id
        for producer in step.waits:
            happens.add_edge(producer, step.id)
    return all(nx.has_path(happens, a, b) for a, b in dag.edges)


@pytest.mark.parametrize("streams", [None, 2, 1, "auto"])
def test_branchy_models_match_with_any_stream_setting(streams):
    torch.manual_seed(0)
    for model, args in [build("inception"), (Heads().eval(), (torch.randn(1, 32),))]:
        compiled = fusec.compile(model, streams=streams)
        with torch.no_grad():
            expected = model(*args)
            torch._dynamo.reset()
            got = compiled(*args)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert_ran(compiled)


def test_no_cap_uses_one_stream_per_chain_of_the_widest_antichain():
    model, args = build("inception")
    report = fusec.inspect(model, *args, options={"streams": None})
    (graph,) = report.graphs
    assert report.stats["dag_width"] == 4
    assert report.stats["streams"] == 4
    assert covered(graph.plan)
    assert report.stats["cross_stream_waits"] == 3  # the concat waits on the three other branches


def test_cap_packs_streams_and_keeps_dependencies():
    model, args = build("inception")
    for cap in (1, 2, 3):
        report = fusec.inspect(model, *args, options={"streams": cap})
        plan = report.graphs[0].plan
        assert report.stats["streams"] == min(cap, 4)
        assert covered(plan)
        if cap == 1:
            assert report.stats["cross_stream_waits"] == 0


def test_auto_says_why():
    model, args = build("inception")
    report = fusec.inspect(model, *args)
    assert "auto" in report.graphs[0].streams.reason
    chain = fusec.inspect(lambda x: torch.exp(x).sin(), torch.randn(8), options={"streams": 2})
    assert "no two kernels are independent" in chain.graphs[0].streams.reason


def test_auto_plans_no_streams_for_cpu_tensors():
    model, args = build("inception")
    for record in fusec.inspect(model, *args).graphs:  # CPU tensors: Triton's interpreter has no streams
        assert record.streams.streams == 1 and "CPU" in record.streams.reason
        assert record.streams.dag_width == 4
        assert {s.stream for s in record.plan.steps} == {0} and not any(s.waits for s in record.plan.steps)


def test_eight_independent_chains_are_one_launch():
    def fn(*xs):
        return tuple(torch.sigmoid(x) * (i + 1) - 0.5 for i, x in enumerate(xs))
    xs = [torch.randn(4 + i, 6) for i in range(8)]
    compiled = fusec.compile(fn)
    for got, expected in zip(compiled(*xs), fn(*xs), strict=True):
        torch.testing.assert_close(got, expected)
    report = assert_ran(compiled)
    assert report.stats["kernels"] == 1
    (kernel,) = report.kernels
    assert kernel.kind == "combo" and len(kernel.parts) == 8


def test_horizontal_off_keeps_separate_kernels():
    fn = lambda x, y: (torch.exp(x), torch.cos(y))
    report = fusec.inspect(fn, torch.randn(3), torch.randn(4), options={"horizontal": False})
    assert report.stats["kernels"] == 2


def test_adam_update_over_many_parameters_is_few_launches():
    torch.manual_seed(1)
    params = [torch.randn(n) for n in (10, 33, 64, 7, 128, 5)]
    grads = [torch.randn_like(p) for p in params]
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]

    def adam(params, grads, ms, vs, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        out = []
        for p, g, m, v in zip(params, grads, ms, vs, strict=True):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            out.append((p - lr * (m / (1 - b1)) / (torch.sqrt(v / (1 - b2)) + eps), m, v))
        return out

    compiled = fusec.compile(adam)
    for (p, m, v), (ep, em, ev) in zip(compiled(params, grads, ms, vs), adam(params, grads, ms, vs), strict=True):
        torch.testing.assert_close(p, ep)
        torch.testing.assert_close(m, em)
        torch.testing.assert_close(v, ev)
    report = assert_ran(compiled)
    assert report.stats["kernels"] == 1, report.summary()
    assert report.stats["nodes"] > 6 * 8


def test_combos_never_make_a_cycle_between_launches():
    # a -> c and b -> d with a independent of d and b of c: pairing (a, d) and (b, c) would cycle.
    def fn(x, y):
        a = torch.exp(x)
        b = torch.sin(y)
        c = torch.cumsum(a, 0).cos()
        d = torch.cumsum(b, 0).tanh()
        return c, d
    report = fusec.inspect(fn, torch.randn(8), torch.randn(8))
    plan = report.graphs[0].plan
    dag = step_dag(plan)
    assert nx.is_directed_acyclic_graph(dag)
    position = {s.id: i for i, s in enumerate(plan.steps)}
    assert all(position[a] < position[b] for a, b in dag.edges)  # launched in an order the DAG allows


@pytest.mark.cuda
def test_streams_on_cuda_match_one_stream():
    torch.manual_seed(2)
    model, args = build("inception")
    model, args = model.cuda(), tuple(a.cuda() for a in args)
    with torch.no_grad():
        one = fusec.compile(model, streams=1)(*args)
        torch._dynamo.reset()
        many = fusec.compile(model, streams=None)(*args)
        torch.cuda.synchronize()
    torch.testing.assert_close(many, one)
    heads = Heads().cuda().eval()
    x = torch.randn(1, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fusec.compile(heads, streams=None)(x), heads(x), rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
def test_gelu_on_cuda_matches_eager():
    x = torch.randn(1024, 1024, device="cuda")
    b = torch.randn(1024, device="cuda")
    torch.testing.assert_close(fusec.compile(lambda x, b: F.gelu(x + b))(x, b), F.gelu(x + b))


def test_pointwise_branches_of_one_activation_read_it_once():
    x = torch.randn(16, 16)
    report = fusec.inspect(lambda x: (torch.exp(x) * 2, torch.sin(x) + 1, x.abs().sqrt()), x,
                           options={"horizontal": False})
    assert report.stats["kernels"] == 1
    assert report.stats["bytes_fused"] == 4 * x.numel() * 4  # x read once, three outputs written


class Mixture(nn.Module):
    """A mixture of small MLP experts over one input (batch 1)."""

    def __init__(self, experts=4, width=16):
        super().__init__()
        self.gate = nn.Linear(width, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.SiLU()) for _ in range(experts))

    def forward(self, x):
        weights = torch.softmax(self.gate(x), -1)
        return sum(weights[..., i:i + 1] * e(x) for i, e in enumerate(self.experts))


@pytest.mark.parametrize("streams", [1, None])
def test_mixture_of_small_mlps_matches(streams):
    torch.manual_seed(3)
    model = Mixture().eval()
    x = torch.randn(1, 16)
    compiled = fusec.compile(model, streams=streams)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    assert_ran(compiled)


def test_in_place_adam_step_is_one_launch():
    import copy

    from fusec.bench.workloads import adam_shapes, adam_step

    torch.manual_seed(4)
    shapes = adam_shapes(6, 8)
    state = [[torch.randn(s) for s in shapes] for _ in range(4)]
    state[3] = [t.abs() for t in state[3]]
    expected = copy.deepcopy(state)
    adam_step(*expected)
    compiled = fusec.compile(adam_step)
    compiled(*state)
    for got, want in zip(state, expected, strict=True):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)
    assert assert_ran(compiled).stats["kernels"] == 1
    assert fusec.report_of(compiled).stats["extern_calls"] == 0
