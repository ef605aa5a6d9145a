"""Triton code generation: plan groups -> Triton source text -> compiled kernels."""
