"""Data-parallel training with fusec: DDP (its graph split at gradient buckets) and FSDP2
(`fully_shard` on fusec-compiled blocks), two CPU processes over gloo, equal to eager.

Each test spawns its two processes; a worker asserts in the process and an assertion there
fails the test (torch.multiprocessing re-raises it). Tiny models: the kernels run in
Triton's interpreter (FUSEC_CPU=interpret, inherited from tests/conftest.py).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusec

WORLD = 2
STEPS = 3
WIDE = 512  # a 512 x 512 float32 weight is 1 MiB

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not built into this torch")


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16), torch.nn.GELU(),
                               torch.nn.Linear(16, 4))


def _wide() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(WIDE, WIDE), torch.nn.GELU(), torch.nn.Linear(WIDE, WIDE),
                               torch.nn.GELU(), torch.nn.Linear(WIDE, 4))


def _train(models: list, optimizers: list, rank: int, width: int = 8) -> None:
    """STEPS SGD steps of every model on this rank's batches (the same batches for each model)."""
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(100 * rank + step)
        x, y = torch.randn(4, width, generator=generator), torch.randn(4, 4, generator=generator)
        device = next(models[0].parameters()).device
        x, y = x.to(device), y.to(device)
        for model, optimizer in zip(models, optimizers, strict=True):
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()


def _assert_fusec_ran(compiled) -> fusec.Report:
    report = fusec.report_of(compiled)
    assert report.graphs and all(g.fallback is None and g.runtime is not None for g in report.graphs), \
        [(g.name, g.fallback) for g in report.graphs]
    assert report.stats["ran"]["kernels"] > 0 and report.stats["ran"]["through_torch"] == 0, report.stats["ran"]
    return report


def _init(rank: int, store: str, backend: str = "gloo") -> None:
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=WORLD)


def _ddp_worker(rank: int, store: str, backend: str = "gloo") -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    _init(rank, store, backend)
    if backend == "nccl":
        torch.cuda.set_device(rank)
        torch.set_default_device(f"cuda:{rank}")
    try:
        # 1 MiB buckets (Dynamo's smallest: its first bucket is 1 MiB) over 1 MiB weights: a
        # bucket per layer, so Dynamo splits the forward graph at their boundaries, each piece
        # a fusec graph of its own.
        # The module is compiled, then wrapped: Dynamo does not trace DDP's own forward.
        eager = DDP(_wide(), bucket_cap_mb=1)
        compiled = fusec.compile(_wide())
        compiled_ddp = DDP(compiled, bucket_cap_mb=1)
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled_ddp)]
        _train([eager, compiled_ddp], optimizers, rank, width=WIDE)
        for p, q in zip(compiled_ddp.parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        report = _assert_fusec_ran(compiled)
        forwards = [g for g in report.graphs if g.name.startswith("forward")]
        assert len(forwards) >= 2, [g.name for g in report.graphs]  # the split at buckets
    finally:
        dist.destroy_process_group()


def _fsdp_worker(rank: int, store: str) -> None:
    from torch.distributed.fsdp import fully_shard

    _init(rank, store)
    try:
        eager = _mlp()
        for layer in eager:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(eager)
        # Each block compiled with fusec, then sharded (a block sharded first is not traced:
        # Dynamo leaves FSDP's modules to run eagerly). FSDP's all-gathers and reduce-scatters
        # run in its hooks, around the compiled graphs.
        blocks = [fusec.compile(layer) for layer in _mlp()]
        model = torch.nn.Sequential(*blocks)
        for block in blocks:
            if isinstance(block._orig_mod, torch.nn.Linear):
                fully_shard(block)
        fully_shard(model)
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, model)]
        _train([eager, model], optimizers, rank)
        for p, q in zip(model.parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(p.full_tensor(), q.full_tensor(), rtol=1e-5, atol=1e-6)
        for block in blocks:
            assert len(_assert_fusec_ran(block).graphs) == 2  # forward and backward
    finally:
        dist.destroy_process_group()


def _spawn(worker, tmp_path, *args) -> None:
    store = os.fspath(tmp_path / "store")
    mp.spawn(worker, args=(store, *args), nprocs=WORLD, join=True)


def test_ddp_with_small_buckets_trains_like_eager_ddp(tmp_path):
    _spawn(_ddp_worker, tmp_path)


def test_fsdp2_fully_shard_on_fusec_compiled_blocks_trains_like_eager(tmp_path):
    _spawn(_fsdp_worker, tmp_path)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < WORLD or not dist.is_nccl_available(),
                    reason="needs two CUDA GPUs and NCCL")
def test_ddp_over_nccl_trains_like_eager_ddp(tmp_path):
    _spawn(_ddp_worker, tmp_path, "nccl")
