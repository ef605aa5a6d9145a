"""The @triton.jit helper functions generated kernels call, by name: one table for every
kernel kind, from which `signature.module_source` writes those a kernel's body uses."""

# Philox4x32-10 (Salmon et al., SC'11), first output word; counter (offset, salt, 0, 0).
_PHILOX = """def _philox(seed, offset, salt):
    c0 = offset
    c1 = tl.full([], salt, tl.uint32) + offset * 0
    c2 = offset * 0
    c3 = offset * 0
    k0 = tl.full([], seed, tl.int64).to(tl.uint32)
    k1 = (tl.full([], seed, tl.int64) >> 32).to(tl.uint32)
    for _ in tl.static_range(10):
        a = c0
        b = c2
        c0 = tl.math.umulhi(b, tl.full([], 0xCD9E8D57, tl.uint32)) ^ c1 ^ k0
        c2 = tl.math.umulhi(a, tl.full([], 0xD2511F53, tl.uint32)) ^ c3 ^ k1
        c1 = b * tl.full([], 0xCD9E8D57, tl.uint32)
        c3 = a * tl.full([], 0xD2511F53, tl.uint32)
        k0 = k0 + tl.full([], 0x9E3779B9, tl.uint32)
        k1 = k1 + tl.full([], 0xBB67AE85, tl.uint32)
    return c0"""

# tl.sort's bitonic network for the interpreter (kernels/sort_keys.py): at each step a lane meets
# the lane whose position differs in one bit and keeps the smaller key where its block ascends
# (every block, by the last stage), else the larger.
_LANE_SORT = """def _lane_sort(keys, RBLOCK: tl.constexpr, LOG: tl.constexpr):
    lanes = tl.broadcast_to(tl.arange(0, RBLOCK)[None, :], keys.shape)
    for stage in tl.static_range(1, LOG + 1):
        for step in tl.static_range(stage):
            partner = tl.gather(keys, lanes ^ (1 << (stage - 1 - step)), 1)
            rising = ((lanes >> stage) & 1) == 0
            lower = (lanes & (1 << (stage - 1 - step))) == 0
            keys = tl.where(rising == lower, tl.minimum(keys, partner), tl.maximum(keys, partner))
    return keys"""


HELPERS = {
    "_philox": _PHILOX,
    "_prod": "def _prod(a, b):\n    return a * b",
    "_lane_sort": _LANE_SORT,
    # NaN counts as the largest (argmax) or smallest (argmin); ties take the first index.
    "_argmax": ("def _argmax(v1, i1, v2, i2):\n"
                "    first = (v1 > v2) | ((v1 == v2) & (i1 < i2)) | ((v1 != v1) & ((v2 == v2) | (i1 < i2)))\n"
                "    return tl.where(first, v1, v2), tl.where(first, i1, i2)"),
    "_argmin": ("def _argmin(v1, i1, v2, i2):\n"
                "    first = (v1 < v2) | ((v1 == v2) & (i1 < i2)) | ((v1 != v1) & ((v2 == v2) | (i1 < i2)))\n"
                "    return tl.where(first, v1, v2), tl.where(first, i1, i2)"),
    # log(exp(a) + exp(b)) as eager's logcumsumexp adds: NaN wins, equal infinities stay.
    "_logaddexp": ("def _logaddexp(a, b):\n"
                   "    first = (a > b) | (a != a)\n"
                   "    hi = tl.where(first, a, b)\n"
                   "    lo = tl.where(first, b, a)\n"
                   "    same = (hi == lo) & (tl.abs(hi) == float(\"inf\"))\n"
                   "    return tl.where(same, hi, hi + tl.log(1.0 + tl.exp(lo - hi)))"),
}
