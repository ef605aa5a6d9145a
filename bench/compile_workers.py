"""Kernel compilation one by one, on threads and in worker processes: every kernel of a
workload's plan compiled for sm_90 as `kernels/precompile.py` compiles it on a GPU. No GPU
is needed: Triton's JIT is pointed at an H100 target. Each run is a fresh process with an
empty Triton cache.

    python bench/compile_workers.py transformer gpt2 --workers 2 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("serial", "threads", "processes")


class Hopper:
    """A stand-in for Triton's driver: what its JIT asks before compiling — the device, its
    stream and target (an H100's) — so kernels compile for sm_90 on a machine without a GPU."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


def _plans(workload: str) -> list:
    import fusec
    from fusec.bench import transformer_zoo
    from fusec.examples import EXAMPLES, build

    if workload in EXAMPLES:
        fn, args = build(workload)
    else:
        fn, *args = transformer_zoo.example(workload)
    return [(g.plan.graph, [k for k in g.plan.all_kernels() if k.numel]) for g in fusec.inspect(fn, *args).graphs]


def gpu_calls(graph, kernels, folder) -> dict:
    """kernel id -> its KernelCall as a GPU runtime binds it (loaded from `folder`, not compiled)."""
    from fusec.compiler import rendered
    from fusec.kernels.call import KernelCall
    from fusec.kernels.compile import load_kernel
    from fusec.kernels.kinds import static_launch, static_size_args
    from fusec.runtime import loaded_pointers

    calls = {}
    for kernel in kernels:
        gpu = rendered(graph, kernel, interpret=False)
        fn = load_kernel(gpu.source, gpu.fn_name, interpret=False, cache_dir=folder)
        calls[kernel.id] = KernelCall(fn, static_launch(graph, gpu, interpret=False), static_size_args(graph, gpu),
                                      interpret=False, loaded=loaded_pointers(graph, gpu), name=kernel.id)
    return calls


def measure(workload: str, mode: str, workers: int) -> dict:
    """Compile every kernel of `workload` in this process: seconds, and where each binary came from.
    The pool, for `processes`, starts inside the timed part."""
    import triton
    from triton.runtime import driver

    from fusec.kernels.precompile import precompile
    from fusec.launcher import DTYPES

    plans = _plans(workload)
    driver.set_active(Hopper())
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-")
    folder = tempfile.mkdtemp(prefix="fusec-")
    hits: list[bool] = []
    triton.knobs.compilation.listener = lambda **info: hits.append(info["cache_hit"])
    wall, cpu, compiled = time.perf_counter(), time.process_time(), 0
    for graph, kernels in plans:
        compiled += len(precompile(gpu_calls(graph, kernels, folder), graph, kernels, DTYPES, workers, mode))
    return {"workload": workload, "mode": mode, "workers": workers, "kernels": compiled,
            "wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
            "compiled_here": hits.count(False), "read_back": hits.count(True)}


def _run(workload: str, mode: str, workers: int) -> dict:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "FUSEC_CPU": "torch",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__, "--one", workload, mode, str(workers)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=["transformer", "gpt2"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        print(json.dumps(measure(options.one[0], options.one[1], int(options.one[2]))))
        return
    print("| workload | kernels | mode | wall s | this process's CPU s | compiled here | read back | load |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for _ in range(options.repeat):
        for workload in options.workloads:
            for mode in MODES:
                load = os.getloadavg()[0]
                row = _run(workload, mode, 1 if mode == "serial" else options.workers)
                print(f"| {workload} | {row['kernels']} | {mode} | {row['wall_s']} | {row['cpu_s']} | "
                      f"{row['compiled_here']} | {row['read_back']} | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
