"""The host time `freeze=True` adds to a call: checking that every frozen weight is the tensor it
was and unwritten since (fusec/frozen.py's FrozenCall), beside Dynamo's own cost of a call.

Each CNN zoo model is timed with every floating-point parameter and buffer frozen (an upper
bound: weights the compiled graph reads live are not checked), the compiled graph stubbed out,
so the time is the check's and the input list's alone. Dynamo's is a call of the model compiled
with a backend whose graph returns a stored output at once: its guards and frame handling.

    python bench/freeze_check.py
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusec.bench import cnn_zoo
from fusec.freezing import Weight
from fusec.frozen import Frozen, FrozenCall


@dataclass(frozen=True)
class CheckCost:
    model: str
    weights: int
    check_us: float  # FrozenCall's per-call check and input list
    dynamo_us: float  # a Dynamo-compiled call whose graph does nothing


def _best_us(fn: Callable[[], object], calls: int, runs: int = 5) -> float:
    return min(timeit.repeat(fn, number=calls, repeat=runs)) / calls * 1e6


def check_cost(name: str, calls: int = 2000) -> CheckCost:
    model, x = cnn_zoo.example(name, size=32)
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    frozen = Frozen(None, None, [len(tensors)], [Weight(i, str(i), t) for i, t in enumerate(tensors)], [], 0)
    call = FrozenCall(frozen, lambda inputs: None, lambda args: None, name)
    args = [*tensors, x]
    check = _best_us(lambda: call(list(args)), calls) - _best_us(lambda: list(args), calls)

    def stored_output(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        out = gm(*example_inputs)
        return lambda *inputs: out

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=stored_output)
    with torch.no_grad():
        compiled(x)
        dynamo = _best_us(lambda: compiled(x), calls // 4)
    torch._dynamo.reset()
    return CheckCost(name, len(tensors), check, dynamo)


def main() -> None:
    print("| model | frozen weights | check µs per call | Dynamo µs per call |\n|---|---|---|---|")
    for name in cnn_zoo.ZOO:
        c = check_cost(name)
        print(f"| {c.model} | {c.weights} | {c.check_us:.1f} | {c.dynamo_us:.1f} |")


if __name__ == "__main__":
    main()
