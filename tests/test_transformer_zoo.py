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
# gpt2 19, bert 24, llama 30, qwen2 30, t5 58, vit 25, mistral 30, phi 28, mixtral 44, whisper 71,
# wav2vec2 28 (bench/README.md).
MEASURED = {"gpt2": 13, "bert": 13, "llama": 17, "qwen2": 17, "t5": 32, "vit": 13, "mistral": 17, "phi": 19,
            "mixtral": 37, "whisper": 45, "wav2vec2": 18}
# Run against eager here; the others' kernels are those of the models above (ViT's are BERT's with a
# patch convolution, Mistral's LLaMA's, ...): planned only, to keep the suite's time (each takes a
# minute in the interpreter), and checked against eager by `python bench/transformer_zoo.py --check`.
RUN = ("gpt2", "bert", "llama", "qwen2", "t5", "mixtral", "wav2vec2")


def test_every_zoo_model_has_a_measured_count():
    assert set(MEASURED) == set(ZOO)


@pytest.mark.parametrize("name", sorted(set(MEASURED) - set(RUN)))
def test_zoo_model_plans_within_its_launches_with_nothing_through_torch(name):
    forward, *inputs = example(name)
    torch._dynamo.reset()
    with torch.no_grad():
        report = fusec.inspect(forward, *inputs)
    assert all(g.fallback is None for g in report.graphs), report.summary()
    assert report.stats["kernels"] + report.stats["extern_calls"] <= MEASURED[name], report.summary()


@pytest.mark.parametrize("name", RUN)
def test_zoo_model_equals_eager_within_its_launches(name):
    forward, *inputs = example(name)
    with torch.no_grad():
        report = check(forward, *inputs, rtol=1e-4, atol=1e-4)
    assert report.stats["kernels"] + report.stats["extern_calls"] <= MEASURED[name], report.summary()
    if name == "mixtral":
        # The router's topk, the sort of the tokens by expert and their histogram are kernels; torch
        # runs the matmuls, attention, the grouped matmuls and the scatter inverting the sort.
        externs = {s.target for g in report.graphs for s in g.plan.externs if counts_as_extern(s, g)}
        assert not externs & {"aten.topk.default", "aten.sort.default", "aten.histc.default"}, externs
        assert [k.kind for g in report.graphs for k in g.plan.kernels].count("sort") == 4  # 2 a layer


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
