"""L2 eviction hints on loads, as Inductor gives them, accepted by Triton's interpreter."""

import re

import torch
import torch.nn.functional as F

from tests.eager import check

_LOAD = re.compile(r"tl\.load\((?:tl\.broadcast_to\()?(p_\w+) \+[^\n]*")  # pointers widened to a block too


def hints(source: str) -> list[tuple[str, str | None]]:
    """(pointer, eviction policy or None) of every load, in source order."""
    found = []
    for match in _LOAD.finditer(source):
        policy = re.search(r'eviction_policy="(\w+)"', match.group(0))
        found.append((match.group(1), policy.group(1) if policy else None))
    return found


def test_a_broadcast_input_is_kept_and_a_streamed_one_has_no_hint():
    torch.manual_seed(0)
    x, b = torch.randn(16, 48), torch.randn(48)
    report = check(lambda x, b: F.gelu(x + b), x, b, kernels=1)
    assert hints(report.kernels[0].source) == [("p_arg0_1", None), ("p_arg1_1", "evict_last")]


def test_a_looped_row_is_kept_for_the_next_pass_and_streamed_by_the_last():
    torch.manual_seed(0)
    x = torch.randn(3, 70000)
    report = check(lambda x: torch.softmax(x, -1), x, kernels=1)
    assert hints(report.kernels[0].source) == [("p_arg0_1", "evict_last"), ("p_arg0_1", "evict_first")]


def test_layer_norm_weights_are_kept_in_every_pass():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 70000), torch.randn(70000), torch.randn(70000)
    report = check(lambda x, w, b: F.layer_norm(x, (70000,), w, b), x, w, b, kernels=1, rtol=1e-4, atol=1e-4)
    found = dict.fromkeys(hints(report.kernels[0].source))
    assert list(found) == [("p_arg0_1", "evict_last"), ("p_arg0_1", "evict_first"),
                           ("p_arg1_1", "evict_last"), ("p_arg2_1", "evict_last")]


def test_a_row_in_registers_is_read_once_without_a_hint():
    torch.manual_seed(0)
    report = check(lambda x: torch.softmax(x, -1), torch.randn(8, 256), kernels=1)
    assert hints(report.kernels[0].source) == [("p_arg0_1", None)]
