"""`fusec bench --static`: kernels compiled for sm_90 on a machine without a GPU, and the
numbers read from them (vector widths, spills, passes over each row)."""

import pytest
import torch

from fusec.bench import static as bench_static
from fusec.cli.bench import main

pytest.importorskip("triton.backends.nvidia.compiler")


def test_widest_access_is_read_from_the_ptx():
    ptx = """
        ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
        @%p1 ld.global.L1::evict_last.v2.b16 { %rs1, %rs2 }, [ %rd2 + 0 ];
        st.global.b16 [ %rd3 + 0 ], { %rs3 };
        ld.shared.v4.b32 { %r5, %r6, %r7, %r8 }, [ %r9 + 0 ];
    """
    assert bench_static.widest(ptx, "ld") == 128
    assert bench_static.widest(ptx, "st") == 16
    assert bench_static.widest("", "st") == 0


def test_asynchronous_copies_count_as_loads_of_their_size():
    """A pipelined K loop reads global memory by cp.async into shared memory."""
    ptx = """
        cp.async.cg.shared.global [ %r157 + 0 ], [ %rd5 + 0 ], 0x10, %r158;
        cp.async.ca.shared.global [ %r159 + 0 ], [ %rd6 + 0 ], 4, %r158;
        ld.global.L1::evict_last.b32 { %r1 }, [ %rd1 + 0 ];
    """
    assert (bench_static.widest(ptx, "ld"), bench_static.widest(ptx, "ld", min)) == (128, 32)
    assert bench_static.widest(ptx, "st") == 0


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory):
    """Softmax and cross-entropy over rows too long to keep in registers, in bfloat16: enough
    rows for two programs an SM (a row a program), then few rows (each split across programs)."""
    cache = tmp_path_factory.mktemp("kernels")
    report = {}
    for rows, split in ((512, ""), (16, "split ")):
        report[split + "softmax"] = bench_static.static_report(["softmax"], torch.bfloat16, "tiny", cache,
                                                               {"rows": rows, "cols": 16384})
        report[split + "cross_entropy"] = bench_static.static_report(["cross_entropy"], torch.bfloat16, "tiny",
                                                                     cache, {"rows": rows, "vocab": 16384})
    return report


def test_long_softmax_reads_each_row_twice_with_full_vectors(long_rows):
    [row] = long_rows["softmax"]
    assert row.kind == "reduction"
    assert row.registers is not None and row.spills == 0
    assert (row.load_bits, row.store_bits) == (128, 128)
    assert row.warps == 16  # 4096 of a row a step, 8 values a thread
    # online max and sum, then the write pass: 2 reads + 1 write against 1 + 1
    assert (row.passes, row.bytes_vs_min) == (2, 1.5)


@pytest.mark.parametrize("name", ["softmax", "layer_norm", "residual_layer_norm"])
def test_rows_of_8192_stay_in_registers_without_spills(tmp_path, name):
    """The bench's full rows (8192): read once, written once, in one program a row."""
    [row] = bench_static.static_report([name], torch.bfloat16, "tiny", tmp_path, {"rows": 512, "cols": 8192})
    assert row.spills == 0 and row.registers <= 64 and row.warps == 16
    assert (row.load_bits, row.store_bits) == (128, 128)
    assert (row.passes, row.bytes_vs_min) == (1, 1.0)


def test_cross_entropy_reads_the_logits_once(long_rows):
    [row] = long_rows["cross_entropy"]
    assert row.spills == 0 and row.load_bits == 128
    assert (row.passes, row.bytes_vs_min) == (1, 1.0)


def test_split_rows_compile_to_two_launches_with_full_vectors_and_no_spills(long_rows):
    """16 rows of 16384: each cut into 4 chunks of one 4096-element step (64 programs where
    whole rows gave 16); stage 1 reads each chunk once, stage 2 reads it again and writes it."""
    first, second = long_rows["split softmax"]
    assert (first.kernel, second.kernel) == ("k0/1", "k0/2")
    assert first.spills == second.spills == 0 and first.warps == second.warps == 16
    assert first.load_bits == second.load_bits == second.store_bits == 128
    assert first.narrowest_load == 128  # stage 1 reads only the row (its partials are stores)
    assert (first.passes, first.bytes_vs_min) == (2, 1.5)  # as the whole row: read, then read and write
    stats, totals = long_rows["split cross_entropy"]
    assert stats.spills == totals.spills == 0 and stats.load_bits == 128
    assert (stats.passes, stats.bytes_vs_min) == (1, 1.0)


def test_static_flag_prints_and_writes_the_table(tmp_path, capsys):
    path = tmp_path / "static.md"
    assert main(["--static", "--quick", "--workload", "layer_norm", "--markdown", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| layer_norm | fusec | k0 | reduction |" in out
    assert path.read_text() == out.rstrip("\n") + "\n"
    rows = {cells[1]: cells for line in out.splitlines() if line.startswith("| layer_norm")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    ours, inductor = rows["fusec"], rows["inductor"]  # Inductor's kernel, compiled on a faked H100
    assert ours[6] == "0" and ours[8] == "128 b" and ours[11] == "1"  # no spills, 128-bit loads, one pass
    assert inductor[2].startswith("triton_") and inductor[8] == "128 b"
    assert "- layer_norm: launches per call: fusec 1, Inductor 1" in out


def test_transposed_read_loads_and_stores_full_vectors_through_a_tile(tmp_path):
    """y + sigmoid(x.t()) in bfloat16: every global load and store is 128 bits wide (a
    1-D block loads x as scalars a row apart), the tile's transpose goes through shared
    memory, as Inductor's 32 x 32 tile does."""
    [row] = bench_static.static_report(["transpose_add"], torch.bfloat16, "tiny", tmp_path, {"rows": 256, "cols": 512})
    assert row.kind == "pointwise" and row.spills == 0
    assert (row.narrowest_load, row.load_bits, row.store_bits) == (128, 128, 128)
    assert 0 < row.shared <= 32 * 32 * 4


def test_narrowest_access_is_read_from_the_ptx():
    ptx = "ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\n@%p1 ld.global.b16 { %rs1 }, [ %rd2 + 0 ];"
    assert bench_static.widest(ptx, "ld", min) == 16


def test_batch_one_heads_load_as_wide_as_inductor(tmp_path):
    """mlp_heads (batch 1: Linear, ReLU, Linear per head, then a concat): every kernel's
    narrowest global load is at least Inductor's (32 bits, its concat kernel), where the
    batch-1 row, the narrow biases and the concat's clamped reads were 16-bit; no spills."""
    rows = bench_static.static_report(["mlp_heads"], torch.bfloat16, "tiny", tmp_path, {"heads": 2})
    assert {row.kind for row in rows} == {"matmul", "pointwise"}
    for row in rows:
        assert row.narrowest_load >= 32 and row.spills in (None, 0), row
    assert max(row.narrowest_load for row in rows if row.kind == "pointwise") == 128  # the concat


def test_sixteen_heads_sharing_a_row_do_not_spill(tmp_path):
    """The full-size bench's 16 heads read one batch-1 row in one kernel: 16 accumulators, each
    with its operand tile in flight, fit in registers (16 x 64 tiles spilled 68 bytes)."""
    rows = bench_static.static_report(["mlp_heads"], torch.bfloat16, "tiny", tmp_path,
                                      {"heads": 16, "width": 512, "hidden": 512, "out": 16})
    [shared] = [row for row in rows if row.kernel == "k0"]
    assert shared.kind == "matmul" and shared.spills == 0 and shared.narrowest_load >= 32
