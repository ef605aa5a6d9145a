"""A kernel's entry: its parameters in the order the launcher passes arguments
(buffers, launch extras, host scalars, size symbols, extents), and the Triton
module around it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fusec import sizes
from fusec.ir import Graph, Kind, Node
from fusec.kernels.dtypes import TL_TYPE, compute_dtype
from fusec.kernels.helpers import HELPERS
from fusec.plan import Kernel, LaunchExtra


class Body(Protocol):
    """What a module needs of each renderer whose body it holds."""

    kernel: Kernel
    helpers: set[str]
    asserts: bool


def param(name: str) -> str:
    return f"p_{name}"


def scalar_param(node: Node) -> str:
    """A host scalar's parameter: its value, typed as the kernel computes with it (fusec/lowering_host.py)."""
    return f"s_{node.name}: {TL_TYPE[compute_dtype(node.dtype)]}"


def tensor_params(graph: Graph, names: tuple[str, ...]) -> list[str]:
    """The kernel's pointer parameters; its host scalars' come after every pointer and extra flag."""
    return [param(n) for n in names if not graph[n].host]


def scalar_params(graph: Graph, names: tuple[str, ...]) -> list[str]:
    return [scalar_param(graph[n]) for n in names if graph[n].host]


def size_params(graph: Graph, kernel: Kernel) -> list[str]:
    """The kernel's parameters for the size symbols its buffers' shapes and strides use."""
    # Members' operands too: a constant computed inline (an arange) is neither input nor member.
    names = [n for k in (kernel, *kernel.parts) for n in k.members + k.inputs + k.outputs]
    names += [op for n in list(names) for op in graph[n].operands()]
    used = sizes.symbols(v for n in dict.fromkeys(names) for v in (*graph[n].shape, *(graph[n].strides or ())))
    return [sizes.KERNEL_PREFIX + s for s in used]


def extra_params(extras: tuple[LaunchExtra, ...], finals: tuple[str, ...]) -> list[str]:
    """The parameters the launch extras take, in the order the launcher passes them."""
    names = {LaunchExtra.BAD_INDEX: ["p_bad_index"], LaunchExtra.SEED: ["seed"],
             LaunchExtra.PARTIALS: [*(f"p_partial_{f}" for f in finals), "p_ticket"]}
    return [name for extra in extras for name in names[extra]]


@dataclass(frozen=True)
class Rendered:
    """What a renderer returns: a kernel's Triton module and how its entry is called."""

    source: str
    fn_name: str
    params: tuple[str, ...]  # the entry's parameters, in order
    extras: tuple[LaunchExtra, ...] = ()  # passed after the buffers (their parameters follow them)
    symbols: tuple[str, ...] = ()  # size-symbol parameters, passed after the extras
    rows_fn: str = ""  # a second entry keeping each row in registers ("" when none)
    asserts: bool = False  # checks indices on the device (compiled with Triton's debug on)
    split: tuple[int, ...] = ()  # a reduction's rows cut into chunks: its Split's fields; () when whole


def rendered_module(fn_name: str, params: list[str], body: list[str], renderers: Sequence[Body],
                    extras: tuple[LaunchExtra, ...], symbols: list[str]) -> Rendered:
    """The module of `module_source` with its entry's signature as data (constexpr marks dropped)."""
    members = tuple(m for r in renderers for m in r.kernel.members)
    source = module_source(fn_name, params, body, members, renderers)
    return Rendered(source, fn_name, tuple(p.split(":")[0] for p in params), extras, tuple(symbols),
                    asserts=any(r.asserts for r in renderers))


def module_source(fn_name: str, params: list[str], body: list[str], members: tuple[str, ...],
                  renderers: Sequence[Body]) -> str:
    """A whole kernel module: imports, the helper functions its renderers' bodies call,
    and the @triton.jit entry. Every kernel kind gets its helpers here, from its renderers."""
    helpers = sorted({name for r in renderers for name in r.helpers})
    unspecialized = [p.split(":")[0] for p in params if p == "seed" or p.startswith("s_")]
    prelude = "".join(f"@triton.jit\n{HELPERS[name]}\n\n\n" for name in helpers)
    options = [f"do_not_specialize={unspecialized}"] if unspecialized else []
    if any(r.asserts for r in renderers):
        options.append("debug=True")  # Triton drops device-side asserts from kernels compiled without it
    return "\n".join([
        "import triton",
        "import triton.language as tl",
        "",
        "",
        prelude,
        f"# members: {', '.join(members)}",
        # A fresh seed (or host scalar) every call: specializing on its value would compile a variant per value.
        f"@triton.jit({', '.join(options)})" if options else "@triton.jit",
        f"def {fn_name}({', '.join(params)}):",
        *("    " + line for line in body),
        "",
    ])


def kernel_name(graph: Graph, kernel: Kernel) -> str:
    ops = "_".join(dict.fromkeys(graph[m].op for m in kernel.members if graph[m].kind is not Kind.VIEW))
    return f"{kernel.id}_{ops}"[:60]
