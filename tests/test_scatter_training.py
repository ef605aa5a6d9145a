"""Training through scatter kernels: embedding's gradient (a zero fill and one scatter adding
each token's gradient row), a routed sum's forward and backward, equal to eager."""

import pytest
import torch

import fusec
from tests.eager import assert_ran


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()


class _Tagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.embed = torch.nn.Embedding(50, 16, padding_idx=0)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens)))


def test_embedding_training_equals_eager():
    eager, model = _Tagger(), _Tagger()
    compiled = fusec.compile(model)
    eager_opt, opt = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (eager, model))
    torch.manual_seed(11)
    for _ in range(3):
        tokens = torch.randint(0, 50, (4, 9))
        tokens[0, :3] = 7  # a token seen several times: its gradient rows add up
        for fn, o in ((eager, eager_opt), (compiled, opt)):
            o.zero_grad()
            fn(tokens).square().mean().backward()
            o.step()
    for a, b in zip(eager.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    report = assert_ran(compiled)
    backward = next(g for g in report.graphs if "backward" in g.name)
    kinds = [str(k.kind) for k in backward.plan.kernels]
    # the table's gradient: its zero fill, then one scatter with the padding mask fused in
    assert kinds.count("scatter") == 1, kinds
    assert not [s for s in backward.plan.externs if "index_put" in s.target or "embedding" in s.target]


def test_embedding_gradient_scaled_by_token_frequency():
    torch.manual_seed(12)
    eager, model = (torch.nn.Embedding(10, 3, scale_grad_by_freq=True, padding_idx=2) for _ in range(2))
    model.load_state_dict(eager.state_dict())
    tokens = torch.tensor([[1, 1, 3, 2], [1, 9, 3, 0]])
    (eager(tokens) * torch.arange(3.0)).sum().backward()
    compiled = fusec.compile(model)
    (compiled(tokens) * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(model.weight.grad, eager.weight.grad)
    backward = next(g for g in assert_ran(compiled).graphs if "backward" in g.name)
    assert not backward.plan.externs  # the counts per token are a scatter too


def _routed(x, w, slots):
    """Tokens gathered into slots, transformed, and added back where they came from (an MoE's dispatch and combine)."""
    h = torch.tanh(x[slots] @ w)
    return torch.zeros_like(x).index_add(0, slots, h).square().sum()


def test_routed_sum_forward_and_backward_equal_eager():
    torch.manual_seed(13)
    x, w, slots = torch.randn(6, 4), torch.randn(4, 4), torch.tensor([0, 2, 2, 5, 1])
    grads, compiled = [], fusec.compile(_routed)
    for fn in (_routed, compiled):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(xs, ws, slots)
        loss.backward()
        grads.append((loss, xs.grad, ws.grad))
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected)
    kinds = {g.name.split("_")[0]: [str(k.kind) for k in g.plan.kernels] for g in assert_ran(compiled).graphs}
    # the combine, and x[slots]'s gradient (an index_put that accumulates), are scatter kernels
    assert kinds["forward"].count("scatter") == 1 and kinds["backward"].count("scatter") == 1, kinds
