"""Rows split across programs (a two-stage reduction) when the rows alone would leave SMs
idle: each chunk's partials, then the rows' values from them. Against eager with the values
that break a naive combine (-inf chunks, NaN, equal rows, a late maximum), odd lengths, 16-bit
types; Triton's interpreter runs the split kernels when a test asks (it keeps whole rows
otherwise), and the GPU's rule is checked on its own."""

import pytest
import torch
import torch.nn.functional as F

import fusec
import fusec.kernels.launch as launch
from fusec.compiler import render_plan
from fusec.kernels.kinds import split_launch
from fusec.kernels.launch import SMS, Split, row_split, split_launches
from fusec.kernels.reduction_split import SPLIT_PARAM
from fusec.launcher_text import launcher_source
from fusec.split_rows import SplitCall
from tests.eager import check
from tests.test_online_reductions import ROWS, extreme_rows

LENGTH = 40003  # five chunks of the interpreter's 8192-element step, the last one short


@pytest.fixture
def split(monkeypatch):
    monkeypatch.setattr(launch, "SPLIT_IN_INTERPRETER", True)


def split_kernels(report) -> list[SplitCall]:
    """The split kernels' calls, each checked to have launched both stages once per call."""
    found = []
    for graph in report.graphs:
        for kernel in graph.plan.kernels:
            call = graph.runtime.calls[kernel.id]
            if SPLIT_PARAM in kernel.params:
                assert isinstance(call, SplitCall)
                assert [stage.count for stage in call.stages] == [call.count] * 2 == [graph.runtime.counts.calls] * 2
                found.append(call)
    return found


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(ROWS))
def test_split_softmax_family_matches_eager_on_extreme_rows(split, name, dtype):
    # The NaN in a middle chunk, the late values in the last, short one.
    report = check(ROWS[name], extreme_rows(dtype, LENGTH), kernels=1)
    [call] = split_kernels(report)
    # 8 rows of 40003 in programs of 8 rows: one row group, five chunks.
    assert call.stages[0].launch.grid == (1, 5)
    # softmax writes each chunk again in stage 2; logsumexp's stage 2 has a program per row group.
    assert call.stages[1].launch.grid == ((1, 1) if name == "logsumexp" else (1, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [LENGTH, 3 * 8192 + 1])  # the last chunk one element long
def test_split_variance_merges_welford_partials(split, dtype, length):
    torch.manual_seed(3)
    x = torch.randn(5, length)
    x[1] = 3.0  # all equal: variance exactly 0
    x[2] = x[2] * 1e-3 + 1e4  # tiny spread on a large mean: a naive sum of squares cancels
    x[3, 100] = float("nan")
    x[4, length - 1] = float("inf")
    x = x.to(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    report = check(lambda x: torch.var_mean(x, -1, correction=1), x, kernels=1, **tol)
    assert len(split_kernels(report)) == 1
    check(lambda x: torch.var(x, -1, correction=0), x[:2], kernels=1, **tol)


def test_split_layer_norm_writes_every_chunk_and_the_rows_statistics(split):
    torch.manual_seed(4)
    x, w, b = torch.randn(3, LENGTH) * 2 + 1, torch.randn(LENGTH), torch.randn(LENGTH)
    report = check(lambda x, w, b: F.layer_norm(x, (LENGTH,), w, b), x, w, b, kernels=1,
                   rtol=1e-4, atol=1e-4)
    assert len(split_kernels(report)) == 1
    # mean and rstd per row (stored once, by chunk 0's program) beside the normalized rows
    check(lambda x: torch.ops.aten.native_layer_norm(x, (LENGTH,), None, None, 1e-5), x, kernels=1,
          rtol=1e-4, atol=1e-4)


def test_split_cross_entropy_finishes_the_batch_mean_in_stage_two(split):
    torch.manual_seed(2)
    logits = torch.randn(4, LENGTH) * 4
    logits[1, :9000] = -float("inf")  # a whole chunk of masked-out classes
    logits[3, 31337] = 30.0
    target = torch.tensor([5, LENGTH - 1, -100, 31337])  # one ignored
    report = check(lambda x, t: F.cross_entropy(x, t), logits, target, kernels=1)
    [call] = split_kernels(report)
    assert call.stages[1].launch.grid == (1, 1)  # one row group: the last program is the only one


@pytest.mark.parametrize("op", ["sum", "amax", "mean"])
def test_a_full_reduction_of_a_large_tensor_is_split(split, op):
    torch.manual_seed(5)
    x = torch.randn(300, 1001)
    report = check(lambda x: getattr(x, op)(), x, kernels=1, rtol=1e-4, atol=1e-4)
    [call] = split_kernels(report)
    assert call.stages[0].launch.grid == (1, 37)  # 300300 elements in chunks of 8192


def test_a_very_long_row_in_many_chunks(split):
    """2**19 elements a row: 64 chunks, the maximum late in the last one."""
    torch.manual_seed(6)
    x = torch.randn(2, 1 << 19)
    x[1, -3] = 40.0
    report = check(lambda x: (torch.logsumexp(x, -1), x.sum(-1)), x, kernels=1, rtol=1e-4, atol=1e-3)
    [call] = split_kernels(report)
    assert call.stages[0].launch.grid == (1, 64) and call.stages[0].launch.constants["SPLIT"] == 64


def test_reductions_that_do_not_merge_keep_whole_rows(split):
    """argmax, prod and a reduction reading another (two passes) run a row per program."""
    x = torch.randn(2, LENGTH)
    for fn in (lambda x: x.argmax(-1), lambda x: (x - x.mean(-1, keepdim=True)).abs().amax(-1)):
        report = check(fn, x, kernels=1)
        assert split_kernels(report) == []


def test_the_interpreter_keeps_whole_rows_unless_asked():
    report = check(lambda x: torch.softmax(x, -1), torch.randn(2, LENGTH), kernels=1)
    assert split_kernels(report) == [] and SPLIT_PARAM not in report.kernels[0].params


@pytest.mark.parametrize("rows, length, expected", [
    (512, 32768, None),  # 512 rows: two programs an SM already
    (2 * SMS - 1, 32768, Split(8192, 4, 4)),  # 263 rows x 4 chunks: four programs an SM
    (64, 32768, Split(4096, 8, 8)),  # chunks of one 4096-element step
    (64, 8192, None),  # two steps a row: not worth a second launch
    (1, 2**24, Split(32768, 512, 512)),  # x.sum(): at most 512 chunks
    (3, 50000, Split(4096, 13, 16)),
])
def test_gpu_splits_rows_when_they_leave_sms_idle(rows, length, expected):
    assert row_split(rows, length, persistent=False, inner=True, interpret=False) == expected


def test_gpu_keeps_rows_in_registers_and_columns_whole():
    assert row_split(4, 4096, persistent=True, inner=True, interpret=False) is None
    assert row_split(4, 1 << 20, persistent=False, inner=False, interpret=False) is None
    assert row_split(4, 1 << 20, persistent=False, inner=True, interpret=True) is None


def test_gpu_stage_two_has_a_program_per_chunk_only_where_it_writes_elements():
    split = Split(4096, 8, 8)
    first, writes = split_launches(64, 32768, split, write_pass=True, interpret=False)
    _, combines = split_launches(64, 32768, split, write_pass=False, interpret=False)
    assert first.grid == writes.grid == (64, 8) and first.num_warps == writes.num_warps == 16
    assert (first.constants["STAGE"], writes.constants["STAGE"]) == (1, 2)
    assert first.constants["CHUNK"] == 4096 and first.constants["RBLOCK"] == 4096
    # Only 8 partials a row to combine: one program per row, one warp.
    assert combines.grid == (64, 1) and combines.num_warps == 1


def test_split_rows_in_several_row_groups(split):
    """60 rows: several row groups, each with its own chunks' partials in stage 2."""
    torch.manual_seed(7)
    x = torch.randn(3, 20, 20001) * 3
    x[1, 7, 15000] = 50.0  # a late maximum in a middle group's row
    target = torch.randint(0, 20001, (60,))
    report = check(lambda x: torch.softmax(x, -1), x, kernels=1, rtol=1e-4, atol=1e-4)
    [call] = split_kernels(report)
    assert call.stages[0].launch.grid[0] > 1 and call.stages[0].launch.grid[1] > 1
    report = check(lambda x, t: F.cross_entropy(x.reshape(60, -1), t), x, target, kernels=1, rtol=1e-4, atol=1e-4)
    [call] = split_kernels(report)
    assert call.stages[0].launch.grid[0] > 1


def test_the_readable_launcher_launches_a_split_row_through_its_call():
    """The GPU's launcher runs a split row's two stages through its call, never its binary
    straight; the launcher written out to be read says the same."""
    plan = fusec.inspect(lambda x: torch.softmax(x, -1), torch.randn(8, LENGTH)).graphs[0].plan
    gpu = render_plan(plan, interpret=False)
    assert [SPLIT_PARAM in k.params for k in gpu.kernels] == [True]
    source = launcher_source(gpu)
    assert "k0)(v_arg0_1, v_div)" in source and "K0_RUN" not in source


def test_a_split_kernel_launches_as_its_render_cut_its_rows(monkeypatch):
    """The launches come from the rendered kernel's own split, not from the rule asked again:
    asked where the rule would keep rows whole (the interpreter, more SMs), they still cut
    each row into the chunks its body was rendered for."""
    plan = fusec.inspect(lambda x: torch.softmax(x, -1), torch.randn(8, LENGTH)).graphs[0].plan
    gpu = render_plan(plan, interpret=False)
    [kernel] = gpu.kernels
    rendered = row_split(8, LENGTH, persistent=False, inner=True, interpret=False)
    assert kernel.split == (rendered.chunk, rendered.chunks, rendered.split)
    on_gpu = split_launch(gpu.graph, kernel, interpret=False)
    monkeypatch.setattr(launch, "SMS", 4)  # 8 rows give every SM two programs: whole rows now
    assert row_split(8, LENGTH, persistent=False, inner=True, interpret=False) is None
    assert split_launch(gpu.graph, kernel, interpret=False) == on_gpu
    interpreted = split_launch(gpu.graph, kernel, interpret=True)
    # Its rows grouped by the interpreter's blocks, each row in the chunks its body was rendered for.
    cut = [(s.grid[1], s.constants["CHUNK"], s.constants["SPLIT"]) for s in (interpreted.first, interpreted.second)]
    assert cut == [(s.grid[1], s.constants["CHUNK"], s.constants["SPLIT"]) for s in (on_gpu.first, on_gpu.second)]
    assert not render_plan(plan, interpret=True).kernels[0].split  # the interpreter renders whole rows
