"""What a sort kernel may hold: one sort's values and the positions they came from, nothing else."""

from __future__ import annotations

from fusec.ir import Kind, Node
from fusec.passes.refusal import Refusal


def sort_refusal(members: list[Node]) -> Refusal | None:
    """Why `members` cannot be one sort kernel (None: they can, or hold no sort)."""
    sorts = [m for m in members if m.op == "sort"]
    if not sorts:
        return None
    if len(sorts) > 1:
        return Refusal("sort", f"sorts {sorts[0].name} and {sorts[1].name} would share a kernel")
    for node in members:
        if node.kind is not Kind.SORT:
            # The row is ranked whole in registers before any value is known: nothing is computed around it.
            return Refusal("sort", f"a sort ({sorts[0].name}) and {node.name} ({node.op}) do not share a kernel")
    return None
