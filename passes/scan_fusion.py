"""What a scan kernel may hold: one scan, the pointwise work in front of it at any position
of its row, and pointwise work behind it that reads the running value where it was computed."""

from __future__ import annotations

from fusec.ir import POINTWISE_OPS, Graph, Kind, Node
from fusec.passes.reach import bounded_descendants
from fusec.passes.refusal import Refusal


def scan_refusal(graph: Graph, members: list[Node], position: dict[str, int]) -> Refusal | None:
    """Why `members` cannot be one scan kernel (None: they can, or hold no scan); `position`
    is a topological order of the graph's nodes."""
    scans = [m for m in members if m.kind is Kind.SCAN]
    if not scans:
        return None
    if len(scans) > 1:
        return Refusal("scan", f"scans {scans[0].name} and {scans[1].name} would share a kernel")
    scan = scans[0]
    names = {m.name for m in members}
    # A member the scan reaches comes before the last member in topological order: the search stops there.
    after = bounded_descendants(graph.nx, position, scan.name, max(position[n] for n in names)) & names
    for node in members:
        if node.kind in (Kind.REDUCTION, Kind.MATMUL):
            return Refusal("scan", f"a scan ({scan.name}) and a {node.kind.value} ({node.name}) do not share a kernel")
        if node.kind is not Kind.VIEW and node.shape != scan.shape:
            # The kernel walks the scan's elements: every value it computes is one of them.
            return Refusal("scan", f"{node.name} has shape {list(node.shape)}, not the scan's {list(scan.shape)}")
        if node.name in after and node.op not in POINTWISE_OPS:
            # A running value exists only at the position it was computed at.
            return Refusal("scan", f"{node.name} ({node.op}) would read {scan.name} at another position")
    return None
