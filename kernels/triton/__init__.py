"""Triton kernels, one op family per file (norm, activation, rope, paged_attention).

Each file holds its kernel(s), a host wrapper that checks shapes, strides and dtypes
and computes the grid, and the function the dispatch in kernels/<op>.py calls. This
package imports `triton`; the rest of `kernels` never imports it eagerly, so the
package runs without triton installed (see kernels/backend.py).

CUDA tensors run compiled kernels. CPU tensors run the same kernel source in Triton's
interpreter, allowed only when TRITON_INTERPRET=1 (slow: for tests on machines without
a GPU; the interpreter has no bf16 arithmetic and rounds FP8 unreliably).
"""
