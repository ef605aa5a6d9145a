"""TorchInductor's kernels for a bench workload, compiled for an H100 (sm_90) without a GPU,
so `fusec bench --static` sets them beside fusec's.

Inductor generates CUDA kernels only for CUDA tensors, so a child process
pretends to have one: torch.cuda and Dynamo's CUDA interface report an H100
(sm_90, 132 SMs), Triton's driver targets sm_90, and two Inductor passes that
create real CUDA tensors are switched off. The workload is traced with
make_fx on fake CUDA tensors and compiled by `compile_fx`; its output code is
caught as it is loaded (nothing runs), and each Triton kernel in it is
compiled with its own `triton_meta` and the first configuration it lists (the
one used without autotuning). The fakes touch torch internals (written for
torch 2.13 and Triton 3.9): where they fail the parent prints why and goes on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from fusec.bench.ptx import H100 as SM90
from fusec.bench.ptx import ptxas_usage, widest

_KERNEL = re.compile(r"^(\w+) = async_compile\.triton\('(\w+)', '''(.*?)''', device_str='cuda'\)", re.S | re.M)
_RUN = re.compile(r"^\s+(\w+)\.run\(", re.M)
_EXTERN = re.compile(r"extern_kernels\.\w+\(")
_LOOP = re.compile(r"for r0_offset in ")
_ERROR = re.compile(r"^[\w.]*(Error|Exception|Exit)\b")
PROPERTIES = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                       regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                       max_threads_per_block=1024, warp_size=32, total_memory=80 * 2**30, gcnArchName="",
                       L2_cache_size=50 * 2**20, shared_memory_per_block_optin=232448,
                       max_shared_memory_per_block_optin=232448)


def inductor_stats(name: str, dtype: torch.dtype, tier: str, sizes: dict | None,
                   timeout: float = 600) -> tuple[list[dict], int]:
    """(Inductor's kernels, each as the fields of a `static.KernelStats`, and its launches
    per call) for a workload, from a child process; raises RuntimeError saying why when
    the fake GPU path fails for it."""
    args = [sys.executable, "-m", "fusec.bench.inductor_static", name, str(dtype).removeprefix("torch."), tier,
            json.dumps(sizes or {})]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"Inductor took over {timeout:.0f} s") from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        said = done.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(next((line for line in reversed(said) if _ERROR.match(line)), said[-1])[:200])
    found = json.loads(lines[-1])
    return found["kernels"], found["launches"]


def fake_h100() -> None:
    """Make this process's torch and Triton believe an H100 is device 0."""
    import torch._dynamo.device_interface as device_interface
    import torch._inductor.fx_passes.fuse_attention as fuse_attention
    import torch._inductor.fx_passes.joint_graph as joint_graph
    import torch._inductor.fx_passes.misc_patterns as misc_patterns
    import triton
    from torch._inductor.runtime import triton_helpers
    from triton.backends.compiler import GPUTarget

    cuda = torch.cuda
    for attr, value in {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
                        "get_device_capability": lambda d=None: (9, 0),
                        "get_device_properties": lambda d=None: PROPERTIES,
                        "get_device_name": lambda d=None: PROPERTIES.name, "is_initialized": lambda: True,
                        "_lazy_init": lambda: None, "set_device": lambda d: None, "device": _NoDevice,
                        "get_rng_state": lambda device="cuda": torch.zeros(16, dtype=torch.uint8),
                        "set_rng_state": lambda *a, **k: None}.items():
        setattr(cuda, attr, value)
    torch._C._cuda_getDevice = lambda: 0
    torch._C._cuda_getDeviceCount = lambda: 1
    interface = device_interface.CudaInterface
    for attr, value in {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
                        "get_compute_capability": lambda device=None: 90,
                        "get_device_properties": lambda d=None: PROPERTIES,
                        "set_device": lambda d: None, "get_raw_stream": lambda d: 0,
                        "is_bf16_supported": lambda including_emulation=False: True}.items():
        setattr(interface, attr, staticmethod(value))
    interface.device = _NoDevice
    interface.Worker.get_device_properties = staticmethod(lambda device=None: PROPERTIES)
    interface.Worker.current_device = staticmethod(lambda: 0)
    triton.runtime.driver.set_active(_Driver(GPUTarget("cuda", *SM90)))
    triton_helpers.set_driver_to_gpu = lambda: None
    # These make real CUDA tensors while Inductor initialises its pattern passes.
    joint_graph.constant_fold_uniform_value = lambda gm: None
    fuse_attention._sfdp_init = lambda *a, **k: None
    misc_patterns._misc_patterns_init = lambda *a, **k: None
    torch._inductor.config.compile_threads = 1


class _NoDevice:
    def __init__(self, device: Any) -> None:
        pass

    def __enter__(self) -> _NoDevice:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False


class _Driver:
    """Triton's active driver, as far as Inductor's code generation asks it."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: Any = None) -> int:
        return 0

    def get_device_interface(self) -> Any:
        return torch.cuda

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cuda", 0)

    def is_active(self) -> bool:
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty


def output_code(fn: Any, args: tuple) -> str:
    """Inductor's output code for `fn` on fake CUDA tensors shaped like `args`."""
    from torch._inductor.codecache import PyCodeCache
    from torch._inductor.compile_fx import compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    caught: list[str] = []

    def catch(cls: Any, key: str, path: str, *rest: Any, **kw: Any) -> None:
        caught.append(Path(path).read_text())
        raise _Caught

    PyCodeCache.load_by_key_path = classmethod(catch)
    with FakeTensorMode(allow_non_fake_inputs=False):
        fake = torch.utils._pytree.tree_map_only(
            torch.Tensor, lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda"), args)
    graph = make_fx(fn, tracing_mode="fake")(*fake)
    try:
        compile_fx(graph, list(torch.utils._pytree.tree_leaves(fake)))
    except Exception:
        if not caught:
            raise
    return caught[-1]


class _Caught(Exception):
    """Inductor's output code was caught before it ran."""


def kernel_rows(workload: str, code: str, workdir: Path) -> list[dict]:
    """Each Triton kernel in Inductor's output code compiled for sm_90 with its first config."""
    rows = []
    for _, name, source in _KERNEL.findall(code):
        binary = _compile(name, source, workdir)
        ptx = binary.asm["ptx"]
        registers, spills = ptxas_usage(ptx)
        kind = "reduction" if "triton_heuristics.reduction" in source or "persistent_reduction" in source else \
            "pointwise"
        passes = (len(_LOOP.findall(source)) or 1) if kind == "reduction" else None
        rows.append({"workload": workload, "kernel": name, "kind": kind, "warps": binary.metadata.num_warps,
                     "registers": registers, "spills": spills, "shared": binary.metadata.shared,
                     "load_bits": widest(ptx, "ld"), "store_bits": widest(ptx, "st"), "passes": passes,
                     "bytes_vs_min": None, "narrowest_load": widest(ptx, "ld", min), "system": "inductor"})
    return rows


def _compile(name: str, source: str, workdir: Path) -> Any:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    path = workdir / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tuner = getattr(module, name)
    meta = tuner.triton_meta
    config = tuner.configs[0]
    constants = {**meta.get("constants", {}), **config.kwargs}
    signature = {**meta["signature"], **{k: "constexpr" for k in constants}}
    attrs = meta["configs"][0] if meta.get("configs") else {}
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return triton_compile(ASTSource(tuner.fn, signature, constants, attrs=attrs), target=GPUTarget("cuda", *SM90),
                          options=options)


def main(argv: list[str]) -> None:
    """Child process: `name dtype tier sizes-json` -> one JSON line on stdout."""
    from fusec.bench.workloads import WORKLOADS

    name, dtype, tier, sizes = argv
    workload = WORKLOADS[name]
    case = workload.build({**workload.sizes[tier], **json.loads(sizes)}, torch.device("meta"), getattr(torch, dtype))
    if case.grad_outputs is not None:
        raise SystemExit("a training step is not traced for Inductor here (forward only)")
    fn, args = case.fn, case.args
    if isinstance(fn, torch.nn.Module):  # its weights are inputs, as torch.compile passes them
        module = fn
        fn, args = (lambda weights, *a: torch.func.functional_call(module, weights, a)), (
            {**dict(module.named_parameters()), **dict(module.named_buffers())}, *args)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tmp, "inductor")))
        fake_h100()
        code = output_code(fn, args)
        rows = kernel_rows(name, code, Path(tmp))
    print(json.dumps({"kernels": rows, "launches": len(_RUN.findall(code)) + len(_EXTERN.findall(code))}))


if __name__ == "__main__":
    main(sys.argv[1:])
