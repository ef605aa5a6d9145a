"""The transformer zoo: each model equals eager under fusec with every planned kernel run and no
graph through torch, at no more launches than measured (`python bench/transformer_zoo.py`, where
torch.compile's count stands beside it); and the count of torch.compile's launches is read right
from its generated code."""

import pytest
import torch

import fusec
from fusec.bench.transformer_zoo import ZOO, example
from fusec.bench.zoo import inductor_launches, wrapper_launches
from fusec.report import counts_as_extern
from tests.eager import check

pytest.importorskip("transformers", reason="the transformer zoo needs `transformers` (pip install -e .[models])")

# fusec's launches per forward (kernels + extern calls) when measured; torch.compile's were
# gpt2 19, bert 24, llama 30, qwen2 30, t5 58 (bench/README.md).
MEASURED = {"gpt2": 17, "bert": 17, "llama": 21, "qwen2": 21, "t5": 42}


def test_every_zoo_model_has_a_measured_count():
    assert set(MEASURED) == set(ZOO)


@pytest.mark.parametrize("name", list(MEASURED))
def test_zoo_model_equals_eager_within_its_launches(name):
    forward, *inputs = example(name)
    with torch.no_grad():
        report = check(forward, *inputs, rtol=1e-4, atol=1e-4)
    assert report.stats["kernels"] + report.stats["extern_calls"] <= MEASURED[name], report.summary()


_WRAPPER = """
cpp_fused_add_0 = async_compile.cpp_pybinding(['float*'], '''...''')

class Runner:
    def call(self, args):
        buf0 = empty_strided_cpu((4, 8), (8, 1), torch.float32)
        cpp_fused_add_0(arg0_1, buf0)
        extern_kernels.mm(buf0, arg1_1, out=buf1)
        buf2 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(buf1, buf1, buf1)
        buf3 = torch.ops.aten.view.default(buf2, [32])
        buf4 = reinterpret_tensor(buf3, (4, 8), (8, 1), 0)
        triton_poi_fused_relu_1.run(buf4, 32, stream=stream0)
        return (buf4, )

    def other(self):
        cpp_fused_add_0(arg0_1, buf0)
"""


def test_wrapper_launches_counts_kernels_and_ops_in_call_but_not_views():
    # the C++ kernel, the library matmul, attention and the Triton kernel; not the view,
    # the reinterpretation, the kernel's definition or a call outside call()
    assert wrapper_launches(_WRAPPER) == 4


def test_inductor_launches_of_a_matmul_and_its_activation():
    def f(x, w):
        return torch.relu(x @ w).view(-1)

    with torch.no_grad():
        launches = inductor_launches(f, torch.randn(8, 16), torch.randn(16, 8))
    assert launches == 2  # extern_kernels.mm, then one C++ kernel for the ReLU


def test_unmasked_causal_lm_computes_its_positions_and_sequence_checks_in_kernels():
    # Without an attention mask, LLaMA derives positions and checks for packed sequences
    # (arange, diff, cumsum): all index math; torch runs only attention and bare matmuls.
    forward, ids, _ = example("llama")
    with torch.no_grad():
        report = fusec.inspect(lambda i: forward.model(input_ids=i, use_cache=False), ids[:1])
    externs = {s.target for g in report.graphs for s in g.plan.externs if counts_as_extern(s, g)}
    assert externs == {"aten.mm.default", "aten._scaled_dot_product_flash_attention_for_cpu.default"}
