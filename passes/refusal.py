"""Why two groups were not fused: a text a person reads, and a stable code to group and test by."""

from __future__ import annotations

from fusec.ir import Kind, Node, is_constant


class Refusal(str):
    """The reason on an unfused edge. It is the text (a `str`, so reports and tests read it as
    before); `code` names the rule that refused, the same for every edge that rule refuses
    (`"cycle"`, `"matmul-reduction"`, `"extern"`, ...: CODES)."""

    code: str

    def __new__(cls, code: str, text: str) -> Refusal:
        if code not in CODES:
            raise ValueError(f"unknown refusal code {code!r}; add it to CODES with what it means")
        self = super().__new__(cls, text)
        self.code = code
        return self

    def __getnewargs__(self) -> tuple[str, str]:  # pickled with its code (plans in packages)
        return (self.code, str(self))


# code -> what the rule is
CODES = {
    "cycle": "merging would create a cycle between kernels",
    "shapes": "the outputs would have different iteration spaces",
    "reduction-shapes": "a reduction feeds a reduction of another shape",
    "final-reduction": "a reduction over other than the rows cannot end a row-wise kernel",
    "total-read": "per-row work would read a total over all rows",
    "matmul-operands": "matmuls that do not share a left operand and shape",
    "matmul-reduction": "a matmul and a reduction do not share a kernel (it is not along the product's rows)",
    "matmul-rows": "a row reduction after a matmul whose rows do not fit one output tile",
    "tile-recompute": "a matmul prologue would be recomputed for every tile",
    "tile-read": "a view would read the matmul at another tile",
    "row-move": "a view would move values between the rows of a reduction",
    "row-read": "a value would be read at another row than its own",
    "scan": "a scan kernel holds one scan and pointwise work of its shape",
    "scatter": "a scatter kernel holds one scatter and the pointwise work only it reads",
    "sort": "a sort kernel holds one sort: its values and their positions",
    "symbolic": "sizes equal in the example only (dynamic shapes)",
    "extern": "one end runs through torch",
    "graph-boundary": "the graph's input or output",
    "alias-view": "a view torch runs as an alias",
    "library-matmul": "a matmul with no epilogue runs as torch's own",
    "torch-constant": "a constant torch fills",
    "fuel": "fusion is off, or its fuel (a merge budget for bisecting) ran out",
    "other": "not fused",
}


def boundary_refusal(src: Node, dst: Node) -> Refusal:
    """Why an edge fusion never considered stays between launches: what one of its ends is."""
    for node in (src, dst):
        if node.kind is Kind.OPAQUE:
            return Refusal("extern", f"{node.name} runs through torch ({node.target or node.op})")
        if node.kind is Kind.OUTPUT:
            return Refusal("graph-boundary", "graph output")
        if node.kind is Kind.INPUT:
            return Refusal("graph-boundary", "graph input")
        if node.kind is Kind.VIEW and node.group is None:
            return Refusal("alias-view", f"{node.name} is a view torch runs as an alias (no kernel reads it)")
        if node.kind is Kind.MATMUL and node.group is None:
            return Refusal("library-matmul",
                           f"{node.name} runs through torch: a matmul with no epilogue to fuse uses torch's own")
        if is_constant(node):
            return Refusal("torch-constant",
                           f"{node.name} is a constant that torch fills (a graph output or read by torch)")
    return Refusal("other", "not fused")
