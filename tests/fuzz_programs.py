"""The fuzzer's random programs: drawn from one seed, run eagerly as they are drawn, kept as source.

A program is a chain/DAG of pointwise ops, casts, views, reductions (float and
integer), cat (with zero-size parts), dropout and matmuls with pointwise,
reduction and dropout epilogues, over a few inputs (broadcasting shapes,
non-contiguous layouts, the odd zero-size dim, NaN and inf; a quarter of the
programs with thousands of elements). It is built one statement at a time, each
one run eagerly as it is drawn (a statement eager rejects is drawn again), and
kept as Python source, so a failure prints a self-contained repro. A fifth of
the float32 programs are differentiated too (`Program.backward`).

Each construct that can be left out has a name (`avoid`, see KNOWN_BUGS in
tests/test_fuzz.py); `Program.constructs` says which ones a program drew.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # the generated programs use it

FLOAT16 = (torch.float16, torch.bfloat16)
FLOATS = (torch.float32, *FLOAT16)

# ---------------------------------------------------------------------------------------
# randomness


class RandomSource:
    """Every choice the generator makes, from one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, p: float) -> bool:
        return self.int(0, 999) < int(p * 1000)


# ---------------------------------------------------------------------------------------
# programs


@dataclass
class Val:
    name: str
    value: torch.Tensor
    exact: bool  # every correct implementation computes it bit for bit (no rounding involved)
    finite: bool  # no NaN or inf, and small enough to cast to int32
    dropped: bool = False  # derived from a reduction whose reduced dims were dropped (keepdim=False)
    random: bool = False  # drawn at random (dropout): compared by property, never read by a later statement
    matmul: bool = False  # computed from a matmul's result (fusion may put what follows in its epilogue)


@dataclass
class Program:
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (name, construction source)
    tensors: list[torch.Tensor] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    vals: list[Val] = field(default_factory=list)
    uses_16bit: bool = False
    ill_conditioned: bool = False  # a difference from eager was excused as rounding (see _ill_conditioned)
    computes: bool = False  # some statement computes (not only views and bare matmuls): kernels must run
    backward: bool = False  # the gradient of a scalar of the outputs is checked too
    constructs: set[str] = field(default_factory=set)  # the named constructs drawn (see KNOWN_BUGS)

    def source(self) -> str:
        args = ", ".join(n for n, _ in self.inputs)
        body = [f"    {line}" for line in self.lines] + [f"    return ({', '.join(self.outputs)},)"]
        return f"def fn({args}):\n" + "\n".join(body) + "\n"

    def repro(self) -> str:
        made = "\n".join(src for _, src in self.inputs)
        return f"torch.manual_seed(0)\n{made}\n{self.source()}"

    def function(self, functional=F):
        scope = {"torch": torch, "F": functional}
        exec(compile(self.source(), "<fuzz program>", "exec"), scope)
        return scope["fn"]

    def random_outputs(self) -> list[bool]:
        randoms = {v.name for v in self.vals if v.random}
        return [re.match(r"\w+", name).group() in randoms for name in self.outputs]


class KeepAll:
    """torch.nn.functional with a dropout that keeps every element (scaled as dropout scales the
    ones it keeps): the reference a dropout output must equal wherever it is not zero."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def dropout(x, p=0.5, training=True, inplace=False):
        return x / (1 - p) if training else x


class Builder:
    """Draws one program, running every statement eagerly as it goes."""

    def __init__(self, src: RandomSource, avoid: Collection[str] = frozenset()) -> None:
        self.src = src
        self.avoid = avoid
        torch.manual_seed(0)  # inputs are drawn in order from this seed (the repro starts the same way)
        self.p = Program()
        self.count = 0
        self.base_dtype = src.choice([torch.float32] * 5 + [torch.float16, torch.bfloat16])
        zero = src.chance(0.05)
        self.B = src.int(1, 3)
        self.R = 0 if zero and src.chance(0.5) else src.int(1, 5)
        self.C = 0 if zero and self.R else src.int(1, 9)
        if src.chance(0.04):  # long rows and columns: reductions that loop instead of staying in registers
            if src.chance(0.5):
                self.R = src.choice([65, 100, 130])
            else:
                self.B, self.C = 1, src.choice([8193, 9000])
        elif "large" not in avoid and not zero and src.chance(0.25):  # many blocks, masked tails
            self.p.constructs.add("large")
            self.R, self.C = src.int(16, 64), src.int(17, 160)
        # Backward through float32 programs: 16-bit gradients would need their own references.
        self.p.backward = "backward" not in avoid and self.base_dtype == torch.float32 and src.chance(0.2)
        if self.p.backward:
            self.p.constructs.add("backward")

    # inputs ---------------------------------------------------------------------------
    def new_input(self, shape: tuple[int, ...], dtype: torch.dtype, layout: str | None = None,
                  finite: bool = False) -> Val:
        src = self.src
        name = f"a{len(self.p.inputs)}"
        layout = layout or src.choice(["contig"] * 4 + ["transposed", "sliced", "offset", "expanded"])
        rank = len(shape)
        if rank < 2 and layout == "transposed":
            layout = "sliced"
        if layout == "expanded" and not any(s > 1 for s in shape):
            layout = "contig"
        if dtype.is_floating_point:
            scale = src.choice(["", "", " * 3"])
            make = lambda sh: f"(torch.randn({list(sh)}, dtype={dtype}){scale})" if scale else \
                f"torch.randn({list(sh)}, dtype={dtype})"
        elif dtype == torch.bool:
            make = lambda sh: f"(torch.randn({list(sh)}) > 0)"
        else:
            make = lambda sh: f"torch.randint(-5, 6, {list(sh)}, dtype={dtype})"
        if layout == "transposed":
            stored = list(shape)
            stored[-1], stored[-2] = stored[-2], stored[-1]
            text = f"{make(stored)}.transpose({rank - 2}, {rank - 1})"
        elif layout == "sliced" and rank:
            d = src.int(0, rank - 1)
            stored = list(shape)
            stored[d] *= 2
            text = f"{make(stored)}[{', '.join([':'] * d + ['::2'])}]"
        elif layout == "offset":
            text = f"{make([shape[0] + 1, *shape[1:]])}[1:]" if rank else f"{make([2])}[1]"
        elif layout == "expanded":
            d = src.choice([i for i, s in enumerate(shape) if s > 1])
            stored = list(shape)
            stored[d] = 1
            text = f"{make(stored)}.expand({list(shape)})"
        else:
            text = make(shape)
        tensor = eval(text, {"torch": torch})
        lines = [f"{name} = {text}"]
        # NaN and inf are left out of programs differentiated: their gradients are NaN either way.
        finite = finite or self.p.backward
        if dtype.is_floating_point and layout != "expanded" and tensor.numel() and not finite and src.chance(0.15):
            for _ in range(src.int(1, 2)):
                flat = src.int(0, tensor.numel() - 1)
                idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tensor.shape))
                special = src.choice(["float('nan')", "float('inf')", "-float('inf')", "0.0", "-0.0"])
                tensor[idx] = eval(special)
                lines.append(f"{name}[{idx}] = {special}")
        self.p.inputs.append((name, "\n".join(lines)))
        self.p.tensors.append(tensor)
        if dtype in FLOAT16:
            self.p.uses_16bit = True
        finite = bool(torch.isfinite(tensor).all()) if dtype.is_floating_point else True
        val = Val(name, tensor, exact=True, finite=finite)
        self.p.vals.append(val)
        return val

    def input_shape(self) -> tuple[int, ...]:
        B, R, C = self.B, self.R, self.C
        return self.src.choice([(R, C)] * 4 + [(B, R, C)] * 3 + [(C,), (R, 1), (), (1, C), (B, 1, C)])

    # statements -----------------------------------------------------------------------
    def emit(self, expr: str, env_vals: list[Val], exact: bool, finite: bool, dropped: bool | None = None,
             broadcasts: bool = False, reject=lambda out: False, computes: bool = True,
             construct: str | None = None, random: bool = False, matmul: bool = False) -> Val | None:
        """Run `expr` eagerly and keep it as the next statement, or None where it cannot be kept.
        `computes`: not only a view (kernels must run for it); `construct`: its name in KNOWN_BUGS."""
        env = {"torch": torch, "F": F, **{v.name: v.value for v in self.p.vals}}
        try:
            out = eval(expr, env)
        except Exception:
            return None
        if isinstance(out, torch.Tensor) and reject(out):
            return None
        if broadcasts and "reduce_broadcast" in self.avoid and any(
                v.dropped and v.value.numel() > 1 and v.value.shape != out.shape for v in env_vals):
            return None
        if not isinstance(out, torch.Tensor) or out.dtype not in (*FLOATS, torch.int32, torch.int64, torch.bool):
            return None
        if out.numel() > 100_000 or out.dim() > 4:
            return None
        if out.dtype in FLOAT16:
            self.p.uses_16bit = True
        if out.dtype.is_floating_point and finite and out.numel():
            finite = bool(torch.isfinite(out).all()) and float(out.abs().max()) < 1e4
        name = f"v{self.count}"
        self.count += 1
        self.p.lines.append(f"{name} = {expr}")
        if dropped is None:
            dropped = any(v.dropped for v in env_vals)
        matmul = matmul or any(v.matmul for v in env_vals)
        val = Val(name, out, exact=exact, finite=finite, dropped=dropped, random=random, matmul=matmul)
        self.p.vals.append(val)
        self.p.computes |= computes
        if construct:
            self.p.constructs.add(construct)
        return val

    def pick(self, pred=lambda v: True, recent: bool = True) -> Val | None:
        options = [v for v in self.p.vals if pred(v) and not v.random]
        if not options:
            return None
        if recent and self.src.chance(0.6):
            return options[-1]
        return self.src.choice(options)

    def partner(self, a: Val, pred=lambda v: True) -> Val:
        """Another value broadcastable with `a` (a fresh input if none is)."""
        options = [v for v in self.p.vals if v is not a and pred(v) and not v.random
                   and _broadcasts(a.value.shape, v.value.shape)]
        if options and self.src.chance(0.75):
            return self.src.choice(options)
        shape = list(a.value.shape)
        shape = shape[self.src.int(0, len(shape)):] if shape and self.src.chance(0.3) else shape
        shape = [1 if s > 1 and self.src.chance(0.3) else s for s in shape]
        dtype = a.value.dtype if a.value.dtype != torch.bool else self.base_dtype
        if self.src.chance(0.1):
            dtype = self.src.choice([torch.float32, torch.int32, self.base_dtype])
        return self.new_input(tuple(shape), dtype)

    def step(self) -> Val | None:
        kind = self.src.choice(["unary"] * 6 + ["binary"] * 6 + ["scalar"] * 2 + ["cast"] * 2 + ["view"] * 4
                               + ["reduce"] * 3 + ["norm"] + ["compare"] * 2 + ["matmul"] * 2 + ["int"] * 2
                               + ["cat"] * 2 + ["dropout"] + ["random"] + ["window"])
        return getattr(self, f"_{kind}")()

    # pointwise ------------------------------------------------------------------------
    def _window(self):
        """A constant pad or a 2-D pool over the last two dims (a strided, padded window)."""
        a = self.pick(lambda v: v.value.dtype.is_floating_point and v.value.dim() >= 1)
        if a is None:
            return None
        x, src = a.name, self.src
        k, stride, pad = src.int(1, 3), src.int(1, 3), src.int(0, 1)
        ceil = src.choice(["False", "True"])
        planes = f"{x}.unsqueeze(0)" if a.value.dim() == 2 else (f"{x}.reshape(1, 1, -1)" if a.value.dim() == 1
                                                                     else x)
        forms = [f"F.pad({x}, ({src.int(-1, 2)}, {src.int(0, 2)}), value={src.choice(['0.0', '-1.5'])})",
                 f"F.max_pool2d({planes}, {k}, {stride}, {min(pad, k // 2)}, ceil_mode={ceil})",
                 f"F.avg_pool2d({planes}, {k}, {stride}, {min(pad, k // 2)}, ceil_mode={ceil})"]
        expr = src.choice(forms)
        return self.emit(expr, [a], exact=a.exact and "avg" not in expr, finite=a.finite)

    def _unary(self):
        a = self.pick(lambda v: v.value.dtype.is_floating_point)
        if a is None:
            return None
        x = a.name
        lo, hi = self.src.choice(["-1.5", "-0.5", "0.0", "0.25"]), self.src.choice(["0.25", "1.0", "2.0"])
        exact_ops = [f"-{x}", f"{x}.abs()", f"torch.relu({x})", f"{x}.clamp({lo}, {hi})",
                     f"{x}.clamp(min={lo})", f"torch.clamp({x}, max={hi})"]
        ops = [f"torch.exp({x})", f"torch.log({x}.abs() + 1)", f"torch.sqrt({x}.abs())",
               f"torch.rsqrt({x}.abs() + 1)", f"torch.tanh({x})", f"torch.sigmoid({x})", f"F.silu({x})",
               f"{x}.pow(2)", f"{x}.pow(3)", f"{x}.abs().pow(0.5)", f"({x}.abs() + 1).pow(-1)", f"{x}.pow(-2)",
               f"{x}.pow(1)", f"torch.expm1({x})", f"torch.sin({x})", f"torch.cos({x})", f"torch.reciprocal({x})",
               f"F.leaky_relu({x}, 0.1)", f"F.softplus({x})", f"F.hardtanh({x})", f"F.elu({x})",
               f"F.hardswish({x})", f"torch.erf({x})", f"torch.sqrt({x})", f"torch.log({x})",
               f"torch.exp(-{x}.abs())", f"{x}.pow(4)", f"{x}.abs().pow(-0.5)"]
        if a.finite:
            # eager's own gelu is inconsistent at +-inf (NaN or inf depending on the vectorized path)
            ops += [f"F.gelu({x})", f"F.gelu({x}, approximate='tanh')"]
        if a.finite or "log1p_inf" not in self.avoid:
            ops.append(f"torch.log1p({x}.abs())")
        if "pow0" not in self.avoid:
            ops.append(f"torch.pow({x}, 0)")
        if "pow_general" not in self.avoid:
            ops += [f"{x}.abs().pow(1.5)", f"{x}.abs().pow(2.5)", f"{x}.pow(-3)", f"({x}.abs() + 0.5).pow(0.3)"]
        if self.src.chance(0.35):
            expr = self.src.choice(exact_ops)
            return self.emit(expr, [a], exact=a.exact, finite=a.finite)
        return self.emit(self.src.choice(ops), [a], exact=False, finite=False)

    def _binary(self):
        a = self.pick(lambda v: v.value.dtype != torch.bool)
        if a is None:
            return None
        b = self.partner(a, lambda v: v.value.dtype != torch.bool)
        x, y = a.name, b.name
        exact_ops = [f"torch.where({x} > {y}, {x}, {y})", f"torch.where({x} <= {y}, {x}, {y})"]
        # a broadcast or stride-0 operand may be loaded at one address (a scalar in the kernel)
        single = a.value.shape != b.value.shape or not all(
            v.name.startswith("a") and 0 not in v.value.stride() and v.value.numel() > 1 for v in (a, b))
        if "minmax_scalar" not in self.avoid or not single:
            exact_ops += [f"torch.maximum({x}, {y})", f"torch.minimum({x}, {y})"]
        ops = [f"{x} + {y}", f"{x} - {y}", f"{x} * {y}", f"{x} / ({y}.abs() + 0.5)", f"{x} / {y}",
               f"{x} * 0.5 + {y}", f"({x} - {y}) * ({x} + {y})"]
        both_fp32 = all(v.value.dtype in (torch.float32, torch.int32) for v in (a, b))
        if self.src.chance(0.35):
            return self.emit(self.src.choice(exact_ops), [a, b], exact=a.exact and b.exact,
                             finite=a.finite and b.finite, broadcasts=True)
        expr = self.src.choice(ops)
        # + - * of float32 (or int32) values round identically in every implementation.
        exact = a.exact and b.exact and both_fp32 and expr in ops[:3] and a.finite and b.finite
        return self.emit(expr, [a, b], exact=exact, finite=a.finite and b.finite and expr in ops[:3],
                         broadcasts=True)

    def _scalar(self):
        a = self.pick(lambda v: v.value.dtype != torch.bool)
        if a is None:
            return None
        c = self.src.choice(["2", "0.5", "-3", "1.5", "1", "0"])
        expr = self.src.choice([f"{a.name} * {c}", f"{a.name} + {c}", f"{c} - {a.name}", f"{a.name} / 4",
                                f"{a.name} * {c} + 1"])
        exact = a.exact and a.value.dtype in (torch.float32, torch.int32) and "/" not in expr
        return self.emit(expr, [a], exact=exact, finite=a.finite)

    def _cast(self):
        a = self.pick()
        if a is None:
            return None
        targets = ["float()", "half()", "bfloat16()", "to(torch.float32)", "bool()"]
        if a.exact and a.finite:
            targets += ["int()", "to(torch.int32)"]
        t = self.src.choice(targets)
        if t == "bool()" and not a.exact:
            return None
        if "cast16" in self.avoid and t in ("half()", "bfloat16()") and a.value.dtype.is_floating_point and \
                a.value.dtype != getattr(torch, t[:-2].replace("half", "float16")):
            return None
        expr = f"{a.name}.{t}"
        to_float = t in ("float()", "to(torch.float32)") or (t in ("half()", "bfloat16()") and
                                                           a.value.dtype in (torch.bool, torch.int32))
        exact = a.exact and (to_float or t in ("int()", "to(torch.int32)", "bool()"))
        if t in ("half()", "bfloat16()") and a.value.dtype == torch.int32:
            exact = a.exact  # small integers are exact in 16-bit floats
        same = {"float()": torch.float32, "to(torch.float32)": torch.float32, "half()": torch.float16,
                "bfloat16()": torch.bfloat16, "bool()": torch.bool}.get(t) == a.value.dtype
        return self.emit(expr, [a], exact=exact, finite=a.finite, computes=not same)

    def _compare(self):
        a = self.pick(lambda v: v.exact and v.value.dtype != torch.bool)
        if a is None:
            return None
        b = self.partner(a, lambda v: v.exact and v.value.dtype != torch.bool)
        if not b.exact:
            return None
        x, y = a.name, b.name
        cmp = self.src.choice([">", ">=", "<", "<=", "==", "!="])
        forms = [f"({x} {cmp} {y})", f"({x} {cmp} 0)", f"torch.where({x} {cmp} {y}, {x}, {y})",
                 f"torch.where({x} {cmp} 0, {x}, 0.5)", f"torch.where({x} {cmp} {y}, 1.0, -1.0)",
                 f"(({x} > 0) & ({y} < 0))", f"(({x} > 0) | ~({y} < 0))", f"torch.isnan({x})",
                 f"torch.isinf({x})", f"torch.floor({x})", f"torch.sign({x})"]
        if not a.value.dtype.is_floating_point:
            forms = forms[:7]
        expr = self.src.choice(forms)
        return self.emit(expr, [a, b], exact=True, finite=a.finite and b.finite, broadcasts=True)

    def _int(self):
        a = self.pick(lambda v: v.value.dtype in (torch.int32, torch.int64, torch.bool))
        if a is None:
            return None
        x = a.name
        if a.value.dtype == torch.bool:
            b = self.partner(a, lambda v: v.value.dtype == torch.bool)
            forms = [f"~{x}", f"{x} & ({b.name} != 0)", f"torch.logical_xor({x}, {b.name})",
                     f"torch.where({x}, {b.name}, 0)", f"{x}.int() + 1", f"{x}.sum()", f"{x} * ({b.name} > 0)"]
            if "bool_add" not in self.avoid:
                forms.append(f"{x} + ({b.name} > 0)")
        else:
            b = self.partner(a, lambda v: v.value.dtype in (torch.int32, torch.int64))
            forms = [f"{x} + {b.name}", f"{x} * {b.name}", f"-{x}", f"{x}.abs()", f"torch.maximum({x}, {b.name})",
                     f"{x} - 3", f"{x} * 2", f"{x} / 2", f"{x} // 2", f"{x} % 3", f"{x}.clamp(-2, 2)",
                     f"{x}.float() * 0.5", f"torch.floor({x})", f"torch.sign({x}) * {x}", f"{x}.pow(2)",
                     f"torch.pow({x}.clamp(0, 3), {b.name}.clamp(0, 3))", f"{x}.half() + 1"]
        if "int_reduce" not in self.avoid and self.src.chance(0.4):
            return self._int_reduce(a)
        expr = self.src.choice(forms)
        exact = "/ 2" not in expr or a.value.dtype != torch.int64
        return self.emit(expr, [a, b], exact=exact and a.exact and b.exact, finite=a.finite and b.finite,
                         broadcasts=True)

    def _int_reduce(self, a: Val):
        """Reductions of integers and booleans: exact, so any difference is a bug."""
        x, rank = a.name, a.value.dim()
        dims, keep = self._dims(rank), self.src.choice(["True", "False"])
        one = str(self.src.int(-rank, rank - 1)) if rank else "0"
        forms = [f"{x}.sum({dims}, keepdim={keep})", f"{x}.sum()", f"({x} > 0).sum({dims})",
                 f"{x}.to(torch.int64).sum({one})", f"{x}.clamp(-1, 1).prod({one})", f"{x}.any({one})",
                 f"{x}.all()", f"({x} != 0).sum({one}, keepdim={keep})"]
        if a.value.dtype != torch.bool:
            forms += [f"{x}.amax({dims}, keepdim={keep})", f"{x}.amin({one})", f"{x}.max({one}).values",
                      f"{x}.argmax({one})", f"{x}.argmin()"]
        expr = self.src.choice(forms)
        dropped = a.dropped or ("keepdim=True" not in expr and not expr.endswith("()"))
        return self.emit(expr, [a], exact=a.exact, finite=a.finite, dropped=dropped, construct="int_reduce")

    # cat and dropout ------------------------------------------------------------------
    def _cat(self):
        """`cat` with parts computed, drawn, zero-size along the dim, or the legacy empty 1-D tensor."""
        a = self.pick(lambda v: v.value.dim() >= 1)
        if a is None:
            return None
        x, shape, rank = a.name, list(a.value.shape), a.value.dim()
        d = self.src.int(0, rank - 1)
        other_shape = list(shape)
        other_shape[d] = self.src.int(0, 3)
        same = [v for v in self.p.vals if v is not a and not v.random and v.value.dtype == a.value.dtype
                and v.value.dim() == rank and all(s == t for i, (s, t) in enumerate(zip(shape, v.value.shape))
                                                   if i != d)]
        b = self.src.choice(same).name if same and self.src.chance(0.6) else \
            self.new_input(tuple(other_shape), a.value.dtype).name
        kind = self.src.choice(["cat", "cat", "cat_zero_size", "cat_legacy_empty"])
        if kind in self.avoid:
            kind = "cat"
        parts = {"cat": [x, b, f"{x} * 2" if a.value.dtype != torch.bool else f"~{x}"],
                 "cat_zero_size": [x, f"{x}.narrow({d}, 0, 0)", b],
                 "cat_legacy_empty": [f"{x}.new_empty(0)", x, b]}[kind][:self.src.int(2, 3)]
        self._shuffle(parts)
        exact = a.exact and all(v.exact for v in self.p.vals if v.name in parts)
        return self.emit(f"torch.cat([{', '.join(parts)}], {d})", [a], exact=exact, finite=a.finite, construct=kind)

    def _dropout(self):
        """Dropout of a value, or fused into a pointwise or matmul expression: random, so its output is
        checked against the same program with every element kept (see `KeepAll`), and read by no one."""
        if "dropout" in self.avoid:
            return None
        a = self.pick(lambda v: v.value.dtype.is_floating_point and not (v.matmul and "matmul_dropout" in self.avoid))
        if a is None:
            return None
        x, p = a.name, self.src.choice(["0.1", "0.5", "0.75"])
        inner = self.src.choice([x, f"torch.tanh({x})", f"{x} * 2 + 1"])
        return self.emit(f"F.dropout({inner}, {p})", [a], exact=False, finite=False, random=True,
                         construct="dropout")

    def _random(self):
        """A random op (rand_like, dropout) whose value is then made certain, so eager is an exact
        oracle while the Philox code is still generated next to the matmuls and reductions it reads."""
        a = self.pick(lambda v: v.value.dtype.is_floating_point)
        if a is None:
            return None
        x, p = a.name, self.src.choice(["0.1", "0.5", "0.9"])
        forms = [f"{x} + torch.rand_like({x}).floor()",
                 f"torch.where(torch.rand_like({x}) < 1.0, {x}, -{x})",
                 f"torch.where(F.dropout({x}, {p}, training=True) == 0, {x}, {x} * 1)"]
        if a.finite:
            forms.append(f"F.dropout({x}, {p}, training=True) * 0 + {x}")
        return self.emit(self.src.choice(forms), [a], exact=a.exact, finite=a.finite, construct="random_certain")

    # views ----------------------------------------------------------------------------
    def _view(self):
        a = self.pick()
        if a is None:
            return None
        x, shape, rank = a.name, tuple(a.value.shape), a.value.dim()
        src = self.src
        forms = [f"{x}.unsqueeze({src.int(-rank - 1, rank)})", f"{x}.reshape(-1)", f"{x}.clone()",
                 f"{x}.contiguous()"]
        if rank >= 2:
            i, j = src.int(0, rank - 1), src.int(0, rank - 1)
            perm = list(range(rank))
            self._shuffle(perm)
            forms += [f"{x}.transpose({i}, {j})", f"{x}.permute({', '.join(map(str, perm))})", f"{x}.t()"
                      if rank == 2 else f"{x}.transpose(-1, -2)", f"{x}.flatten(0, 1)",
                      f"{x}.reshape({shape[0]}, -1)", f"{x}.transpose(0, 1).reshape(-1)"]
        if rank >= 1:
            d = src.int(0, rank - 1)
            n = shape[d]
            forms += [f"{x}.select({d}, {src.int(-n, n - 1) if n else 0})",
                      f"{x}[{', '.join([':'] * d + ['::2'])}]", f"{x}[{', '.join([':'] * d + ['1:'])}]",
                      f"{x}.narrow({d}, {min(1, n)}, {max(n - 1, 0)})", f"{x}[..., 1::3]",
                      f"{x}.unsqueeze(0).expand(2, *{x}.shape)", f"{x}.squeeze()",
                      f"{x}.reshape({', '.join(map(str, (*shape[:-1], 1, shape[-1])))})"]
            ones = [i for i, s in enumerate(shape) if s == 1]
            if ones:
                new = list(shape)
                new[src.choice(ones)] = src.int(2, 4)
                forms.append(f"{x}.expand({', '.join(map(str, new))})")
            if shape[-1] % 2 == 0 and shape[-1]:
                forms.append(f"{x}.reshape({', '.join(map(str, (*shape[:-1], 2, shape[-1] // 2)))})")
        expr = src.choice(forms)
        return self.emit(expr, [a], exact=a.exact, finite=a.finite, computes=False)

    def _shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.src.int(0, i)
            items[i], items[j] = items[j], items[i]

    # reductions -----------------------------------------------------------------------
    def _dims(self, rank: int) -> str:
        if rank == 0:
            return "0" if self.src.chance(0.5) else "()"
        k = self.src.int(1, rank)
        dims = sorted({self.src.int(-rank, rank - 1) for _ in range(k)}, key=lambda d: d % rank)
        dims = list(dict.fromkeys(d for d in dims))
        return str(dims[0]) if len(dims) == 1 and self.src.chance(0.5) else f"({', '.join(map(str, dims))},)"

    def _reduce(self):
        a = self.pick(lambda v: v.value.dtype != torch.bool or self.src.chance(0.3))
        if a is None:
            return None
        x, rank = a.name, a.value.dim()
        dims, keep = self._dims(rank), self.src.choice(["True", "False"])
        one = str(self.src.int(-rank, rank - 1)) if rank else "0"
        floating = a.value.dtype.is_floating_point
        forms = [f"{x}.sum({dims}, keepdim={keep})", f"{x}.amax({dims}, keepdim={keep})",
                 f"{x}.amin({dims}, keepdim={keep})", f"{x}.sum()", f"{x}.any({one}, keepdim={keep})",
                 f"{x}.argmax({one}, keepdim={keep})", f"{x}.argmin({one})", f"{x}.max({one}).values",
                 f"{x}.argmax()"]
        if floating:
            forms += [f"{x}.mean({dims}, keepdim={keep})", f"{x}.var({dims}, keepdim={keep})",
                      f"{x}.var({one}, correction=0)", f"{x}.std({one}, keepdim={keep})", f"{x}.mean()",
                      f"torch.logsumexp({x}, {one})", f"{x}.prod({one})"]
        expr = self.src.choice(forms)
        exact = a.exact and any(s in expr for s in ("amax", "amin", "argm", ".max(", "any"))
        if "sum" in expr and a.value.dtype in (torch.int32, torch.int64, torch.bool):
            exact = a.exact
        if not a.exact and "arg" in expr:
            return None  # argmax of rounded values may pick another of two near ties
        dropped = a.dropped or ("keepdim=True" not in expr and not expr.endswith("()"))
        # a reduction whose reduced dims all have size 1 (as many elements in as out)
        size1 = "reduce_size1" in self.avoid and a.value.numel() > 1
        # The variance of a (near) constant row is rounding noise: fusec's two passes leave ~1e-16
        # where eager's Welford gives 0, and 1 / var downstream turns that into inf vs 1e16.
        spread = ".var(" in expr or ".std(" in expr

        def reject(out: torch.Tensor) -> bool:
            return (size1 and out.numel() == a.value.numel()) or \
                (spread and out.numel() > 0 and bool(out.float().nan_to_num(1.0).abs().min() < 1e-3))
        return self.emit(expr, [a], exact=exact, finite=a.finite and "prod" not in expr, dropped=dropped,
                         reject=reject)

    def _norm(self):
        a = self.pick(lambda v: v.value.dtype.is_floating_point and v.value.dim() >= 1)
        if a is None:
            return None
        x = a.name
        n = a.value.shape[-1]
        forms = [f"torch.softmax({x}, -1)", f"torch.log_softmax({x}, dim=-1)", f"F.layer_norm({x}, ({n},))",
                 f"torch.softmax({x}, 0)", f"F.softmax({x}.float(), dim=-1)"]
        flat = a.value.numel() and bool(a.value.float().var(-1, correction=0).nan_to_num(1.0).min() < 1e-2)
        if flat:
            # A (near) constant row normalizes rounding noise times rsqrt(eps): ill-conditioned.
            forms = forms[:2] + forms[3:]
        elif self.src.chance(0.4):
            w = self.new_input((n,), a.value.dtype, "contig")
            b = self.new_input((n,), a.value.dtype, "contig")
            forms = [f"F.layer_norm({x}, ({n},), {w.name}, {b.name})"]
        return self.emit(self.src.choice(forms), [a], exact=False, finite=False)

    # matmuls --------------------------------------------------------------------------
    def _matmul(self):
        # Operands are finite: BLAS makes NaN of an inf (0 * inf in its padding) where a
        # single inf term should give inf, so eager is no oracle there.
        a = self.pick(lambda v: v.value.dtype in FLOATS and v.value.dim() in (2, 3) and v.finite)
        if a is None:
            return None
        x, dtype = a.name, a.value.dtype
        k, n = a.value.shape[-1], self.src.int(1, 12)
        rank = a.value.dim()
        if rank == 3 and self.src.chance(0.5):
            w = self.new_input((a.value.shape[0], k, n), dtype, self.src.choice(["contig", "transposed"]), finite=True)
            base = f"torch.bmm({x}, {w.name})"
        elif self.src.chance(0.3) and rank == 2:
            wt = self.new_input((n, k), dtype, "contig", finite=True)
            bias = self.new_input((n,), dtype, "contig", finite=True)
            base = f"F.linear({x}, {wt.name}, {bias.name})"
        else:
            w = self.new_input((k, n), dtype, self.src.choice(["contig", "contig", "transposed"]), finite=True)
            base = f"({x} @ {w.name})"
        epilogues = {None: ["{m}", "{m} + {b}", "torch.relu({m} + {b})", "F.gelu({m} + {b})", "torch.tanh({m}) * 2",
                            "{m} * {b} + {r}", "({m} + {b}).float()", "F.silu({m})"],
                     "matmul_reduce": ["{m}.sum(-1)", "({m} + {b}).amax(-1, keepdim=True)", "torch.softmax({m}, -1)",
                                       "({m} * {m}).mean(-1)", "F.layer_norm({m} + {b}, ({n},))"],
                     "matmul_dropout": ["F.dropout({m} + {b}, 0.25)", "F.dropout(torch.relu({m}), 0.5)"]}
        construct = self.src.choice([None] * 4 + ["matmul_reduce", "matmul_dropout"])
        if construct in self.avoid:
            construct = None
        epi = self.src.choice(epilogues[construct])
        b = r = None
        if "{b}" in epi:
            b = self.new_input((n,), dtype, "contig", finite=True).name  # eager's gelu(inf) may be NaN
        out_shape = tuple(eval(base, {"torch": torch, "F": F, **{v.name: v.value for v in self.p.vals}}).shape)
        if "{r}" in epi:
            r = self.new_input(out_shape, dtype, self.src.choice(["contig", "transposed"])).name
        return self.emit(epi.format(m=base, b=b, r=r, n=n), [a], exact=False, finite=False, computes=epi != "{m}",
                         construct=construct, random=construct == "matmul_dropout", matmul=True)

    # the whole program ----------------------------------------------------------------
    def build(self, steps: int | None = None) -> Program:
        src = self.src
        for _ in range(src.int(1, 2)):
            dtype = self.base_dtype if src.chance(0.85) else src.choice([torch.float32, torch.int32, torch.bool])
            self.new_input(self.input_shape(), dtype)
        want = steps or src.int(1, 7)
        tries = 0
        made = 0
        while made < want and tries < 40:
            tries += 1
            if self.step() is not None:
                made += 1
        computed = [v for v in self.p.vals if v.name.startswith("v")]
        if not computed:
            v = self.emit(f"{self.p.vals[0].name} + 1" if self.p.vals[0].value.dtype != torch.bool
                          else f"~{self.p.vals[0].name}", [], exact=True, finite=True)
            computed = [v]
        # Every value no later statement reads is an output (nothing drawn is dead code),
        # and so is the odd intermediate value.
        body = "\n".join(self.p.lines)
        outs = [v.name for v in computed if v is computed[-1] or
                not re.search(rf"\b{v.name}\b", body.split(f"{v.name} = ", 1)[1]) or src.chance(0.2)]
        if src.chance(0.15):
            last = computed[-1]
            if last.value.dim() >= 2:
                outs.append(f"{last.name}.t()" if last.value.dim() == 2 else f"{last.name}.transpose(0, 1)")
            elif last.value.dim() == 1:
                outs.append(f"{last.name}[::2]")
        self.p.outputs = outs
        if any(v.random for v in self.p.vals):  # dropout draws other masks in eager's backward
            self.p.backward = False
            self.p.constructs.discard("backward")
        return self.p


def _broadcasts(a, b) -> bool:
    try:
        torch.broadcast_shapes(a, b)
        return True
    except RuntimeError:
        return False
