"""Every kernel fusec generates for representative models compiles for an H100 (sm_90)
with Triton's own compiler and ptxas, no GPU needed: catches what the CPU interpreter
accepts but the GPU compiler rejects (float-only math on integers, scalar/block mixes,
shared memory over the limit)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
import fusec.runtime as runtime
from fusec.kernels.compile import load_kernel

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile
except ImportError:  # pragma: no cover - very old Triton
    GPUTarget = None

H100 = (90, 32)
SHARED_LIMIT = 227 * 1024
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
          torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
          torch.bool: "i1"}


def _signature(arg) -> str:
    if isinstance(arg, torch.Tensor):
        return "*" + _TYPES[arg.dtype]
    return "i32" if -(2**31) <= arg < 2**31 else "i64"


@pytest.fixture
def sm90(monkeypatch, tmp_path):
    """Compile, for sm_90 with the GPU launch configuration, every kernel the runtime launches."""
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    compiled = []
    launch_kernel = runtime.Runtime._launch_kernel

    def also_for_gpu(self, kernel, env, launch):
        real = self.kernels[kernel.id]

        class Spy:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    gpu = runtime._launch(self_.plan.graph, kernel, interpret=False)
                    fn = load_kernel(kernel.source, kernel.fn_name, interpret=False, cache_dir=tmp_path)
                    plain = [n for n in fn.arg_names if n not in gpu.constants]
                    signature = {n: _signature(a) for n, a in zip(plain, args, strict=True)}
                    signature.update({n: "constexpr" for n in gpu.constants})
                    binary = triton_compile(ASTSource(fn, signature, dict(gpu.constants)),
                                            target=GPUTarget("cuda", *H100), options={"num_warps": gpu.num_warps})
                    assert binary.metadata.shared <= SHARED_LIMIT, (kernel.id, binary.metadata.shared)
                    compiled.append(kernel.id)
                    return real[grid](*args, **kwargs)
                return launch

        self_ = self
        self.kernels[kernel.id] = Spy()
        try:
            return launch_kernel(self, kernel, env, launch)
        finally:
            self.kernels[kernel.id] = real

    monkeypatch.setattr(runtime.Runtime, "_launch_kernel", also_for_gpu)
    return compiled


def run(fn, *args):
    torch._dynamo.reset()
    out = fusec.compile(fn)(*args)
    return out


def test_pointwise_reduction_and_combo_kernels_compile_for_sm90(sm90):
    torch.manual_seed(0)
    x, b = torch.randn(64, 96), torch.randn(96)
    run(lambda x, b: F.gelu(x + b) * torch.sigmoid(x) - x.abs().sqrt(), x, b)
    run(lambda x: (torch.softmax(x, -1), torch.var_mean(x, -1), x.argmax(-1), x.sum(0)), x)
    run(lambda x: (torch.softmax(x, -1), x.argmax(-1), x.amax(-1)), torch.randn(3, 9000))  # looped rows
    run(lambda x, t: F.cross_entropy(x, t), x, torch.randint(0, 96, (64,)))  # totals via the ticket
    run(lambda *xs: tuple(torch.tanh(t) * i for i, t in enumerate(xs)), *[torch.randn(5 + i) for i in range(4)])
    run(lambda x: F.dropout(x, 0.1, training=True), x)
    run(lambda x, b: torch.cat([x.sin(), b.expand(3, 96) * 2], 0), x, b)
    n = torch.randint(-5, 5, (33,))
    run(lambda n: (n ** 3 + torch.floor(n), (n > 0) & (n < 3), n.to(torch.float16) * 0.5), n)
    assert len(sm90) >= 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matmul_kernels_compile_for_sm90(sm90, dtype):
    torch.manual_seed(1)
    lin, up = nn.Linear(64, 96).to(dtype), nn.Linear(64, 96, bias=False).to(dtype)
    x = torch.randn(2, 40, 64).to(dtype)
    with torch.no_grad():
        run(lambda x: F.gelu(lin(x)) + 1, x)
        run(lambda x: F.silu(lin(x)) * up(x), x)
        run(lambda a, b: torch.relu(torch.bmm(a, b.transpose(1, 2))), x, x)
    assert len(sm90) == 3
