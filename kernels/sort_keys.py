"""Sorting a row by one integer key per element, which Triton's `tl.sort` orders as eager orders
the values, and reading back from each sorted key where its value sits.

A value maps to a signed integer of its own width in eager's order: a float's bits with the
magnitude bits flipped when negative, every NaN above +inf (eager sorts NaN largest, NaNs
equal), -0.0 as +0.0 (eager ties them); an unsigned byte offset by -128; bool as 0 or 1.
Descending, the bitwise not reverses that order. The integer is shifted left past the bits of
the row's block and the element's position goes in the low bits: equal values then order by
position (eager's stable order, ascending or descending) and a sorted key's low bits say
where its value came from. Lanes past the row hold the largest key, so they sort last. A key
is int32 when the value's bits and the position's fit, else int64. 64-bit values do not fit:
they sort twice, by their low half, then stably by their high half.
On a GPU `tl.sort` (a bitonic network) orders the keys. Triton's interpreter runs that
network's lane exchanges as reductions element by element in Python (half a minute for two
rows of 4096), so there the same network exchanges lanes with `tl.gather` (numpy indexing).
"""

from __future__ import annotations

from collections.abc import Callable

import triton

# Bits of the integer a value of each dtype orders as (64-bit values: each half in turn).
VALUE_BITS = {"bool": 8, "uint8": 8, "int8": 8, "int16": 16, "float16": 16, "bfloat16": 16,
              "int32": 32, "float32": 32}
# The longest row a key sort holds in one program: 8192 int64 keys compile for sm_90 in
# 16 warps with no spills (16384 spill); a 64-bit value's second key holds its high half and
# two positions: 32 + 2 * 13 bits.
MAX_KEYED_ROW = 8192

Let = Callable[[str], str]  # binds an expression to a name in the kernel body


def keyed(dtype: str) -> bool:
    """Whether values of `dtype` fit one key with their position (else they sort twice)."""
    return dtype in VALUE_BITS


def key_type(dtype: str, length: int) -> str:
    """The Triton type of a row's keys: the value's bits above the position's."""
    return "tl.int32" if VALUE_BITS[dtype] + _log(length) <= 32 else "tl.int64"


def _float_order(x: str, dtype: str, let: Let) -> str:
    """A float's bits (of its own width, sign-extended to int32), in the order of its values."""
    width = VALUE_BITS[dtype]
    zero = let(f"tl.where({x} == 0, 0.0, {x})")  # -0.0 as +0.0: eager keeps them in place
    if dtype == "float16":
        bits = let(f"{zero}.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)")
    else:  # float32, or bfloat16 computed in float32: its bits are the top half
        bits = let(f"{zero}.to(tl.int32, bitcast=True)" + (" >> 16" if dtype == "bfloat16" else ""))
    top = (1 << (width - 1)) - 1
    ordered = let(f"{bits} ^ (({bits} >> {width - 1}) & {top})")
    return let(f"tl.where({x} != {x}, {top}, {ordered})")


def _order(x: str, dtype: str, let: Let) -> str:
    """The value as a signed integer of its width in eager's ascending order."""
    if dtype in ("float32", "float16", "bfloat16"):
        return _float_order(x, dtype, let)
    if dtype == "uint8":
        return let(f"{x}.to(tl.int32) - 128")
    return let(f"{x}.to(tl.int32)")


def _log(length: int) -> int:
    return max(triton.next_power_of_2(length), 1).bit_length() - 1


def _sorted_lanes(order: str, kind: str, length: int, interpret: bool, let: Let, carried: str | None = None) -> str:
    """[XBLOCK, RBLOCK]: at lane p, the lane of the p-th smallest `order`, ties by lane; with
    `carried` (a position per lane, below the lane in the key), that lane's `carried` instead."""
    log = _log(length)
    largest = (1 << 31) - 1 if kind == "tl.int32" else (1 << 63) - 1
    low, shift = ("roffs", log) if carried is None else (f"(roffs << {log}) | {carried}", 2 * log)
    key = let(f"tl.where(rmask, ({order}.to({kind}) << {shift}) | {low}, {largest})")
    ranked = let(f"_lane_sort({key}, RBLOCK, {log})" if interpret else f"tl.sort({key}, 1)")
    return let(f"tl.where(rmask, ({ranked} & (RBLOCK - 1)).to(tl.int32), 0)")


def sorted_positions(x: str, dtype: str, length: int, descending: bool, interpret: bool, let: Let) -> str:
    """[XBLOCK, RBLOCK]: at lane p, the position along the row of its p-th value in eager's stable
    order; `x` is the row's values ([XBLOCK, RBLOCK], lanes past `rnumel` masked)."""
    order = _order(x, dtype, let)
    if descending:
        order = let(f"~{order}")
    return _sorted_lanes(order, key_type(dtype, length), length, interpret, let)


def _wide_order(x: str, dtype: str, descending: bool, let: Let) -> str:
    """A 64-bit value as an int64 in eager's order (descending: reversed)."""
    order = x
    if dtype == "float64":
        top = (1 << 63) - 1
        bits = let(f"tl.where({x} == 0, 0.0, {x}).to(tl.int64, bitcast=True)")
        order = let(f"tl.where({x} != {x}, {top}, {bits} ^ (({bits} >> 63) & {top}))")
    return let(f"~{order}") if descending else order


def sorted_wide_positions(x: str, dtype: str, length: int, descending: bool, interpret: bool, let: Let,
                          at: Callable[[str], str]) -> str:
    """`sorted_positions` for 64-bit values, which leave no room for a position: two stable key
    sorts, least significant half first (an LSD radix sort of two digits). The second sorts the
    high halves, read again (`at`: the row's values at given positions) in the first's order, with
    the first's lane as the tie-break and its position carried below it (32 + 2 * 13 bits for a
    row of 8192: no lane exchange after the sort, which compiles for minutes as `tl.gather`)."""
    order = _wide_order(x, dtype, descending, let)
    first = _sorted_lanes(let(f"{order} & 0xFFFFFFFF"), "tl.int64", length, interpret, let)
    high = let(f"{_wide_order(at(first), dtype, descending, let)} >> 32")
    return _sorted_lanes(high, "tl.int64", length, interpret, let, carried=first)
