"""A stride-1 convolution computed as bfloat16 matmuls with float32 accumulation, forward and gradients.

`matmul_conv` is a drop-in for `lax.conv_general_dilated` (pass it to flax as
``nn.Conv(..., conv_general_dilated=matmul_conv)``; parameters are unchanged).
For stride 1, no dilation, one group, NHWC / HWIO, and padding between 0 and
kernel size - 1 on every side (which covers 'SAME' and 'VALID'), it

  * rounds both operands to bfloat16,
  * computes the convolution as matmuls with float32 accumulation
    (``preferred_element_type=float32``), and
  * returns **float32**, whatever the input dtypes (a bias added by flax
    afterwards keeps it float32).

Its custom gradient computes both cotangents the same way (the incoming
cotangent rounded to bfloat16, float32 accumulation) and returns them in the
dtypes of the primal operands: float32 for float32 inputs, bfloat16 when flax
has already cast them (``nn.Conv(dtype=jnp.bfloat16)``). Everything else falls
back to `lax.conv_general_dilated` unchanged.

Layout (the "row" form, for a kh x kw kernel; kh = kw = 3 is the tuned case):

    x_rows[b, h, w, j*C + c] = x_pad[b, h, w + j, c]           the kw horizontal taps side by side in channels
    y[b, h, w]   = sum_i x_rows[b, h + i, w] @ W[i].reshape(kw*C, O)      kh matmuls, K = kw*C
    dL/dx        = the same with g for x and flip(W)^T for W, padding (k-1-lo, k-1-hi)
    dL/dW[i]     = g^T @ x_rows[:, i : i + H_out]                          kh matmuls, [O, N] x [N, kw*C]

x_rows is built with one stack along a new axis and a reshape, which XLA:CPU
writes 2-3x faster than the equivalent concatenate at 64+ channels. This was
the fastest matmul form measured against 9 tap matmuls, one im2col matmul
(9*C wide, dominated by its copy), one matmul to a 9*O wide output followed by
9 shifted adds, and one matmul to a kh*O wide output. The matmuls are all
plain dots, so, like conv.py's kernel gradient, the gradient stays fast inside
while loops (`nn.scan`, `lax.scan`), where XLA:CPU's own convolution gradients
run 10-30x slower.

Accuracy: the forward value equals a float32 convolution of the bfloat16-
rounded operands up to float32 summation order (bf16 x bf16 products are
exact in float32). The gradients additionally round the cotangent to bfloat16
(relative error about 2**-9).

Speed depends on the CPU having bf16 matmul units (AMX-BF16, AVX512-BF16).
Without them (an AVX2-only CPU) a bf16 dot with float32 accumulation runs no
faster than a float32 dot, this function's forward is about 2x slower than
XLA's own float32 convolution, and its forward + backward is slower than
conv.py's `loop_friendly_conv` in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vdm.nets.cpu.conv import dims_match

__all__ = ["matmul_conv"]

_COMPUTE = jnp.bfloat16
_ACC = jnp.float32


def _pad(x, padding):
    (pt, pb), (pl, pr) = padding
    return jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def _rows(x_pad, kw, out_w):
    """[B, Hp, Wp, C] -> [B, Hp, out_w, kw * C]: the kw horizontal taps of each output column, side by side."""
    b, hp, _, c = x_pad.shape
    return jnp.stack([x_pad[:, :, j : j + out_w] for j in range(kw)], axis=-2).reshape(b, hp, out_w, kw * c)


def _conv_rows(x, w, padding):
    """bf16 x [B, H, W, C], bf16 w [kh, kw, C, O] -> float32 y [B, Ho, Wo, O], as kh matmuls."""
    kh, kw, c, o = w.shape
    x_pad = _pad(x, padding)
    b, hp, wp, _ = x_pad.shape
    out_h, out_w = hp - kh + 1, wp - kw + 1
    x_rows = _rows(x_pad, kw, out_w)
    y = None
    for i in range(kh):
        term = jnp.dot(x_rows[:, i : i + out_h].reshape(-1, kw * c), w[i].reshape(kw * c, o),
                       preferred_element_type=_ACC)
        y = term if y is None else y + term
    return y.reshape(b, out_h, out_w, o)


def _kernel_grad_rows(x, g, padding, kh, kw):
    """bf16 x [B, H, W, C], bf16 g [B, Ho, Wo, O] -> float32 dL/dW [kh, kw, C, O], one matmul per kernel row."""
    c, (out_h, out_w, o) = x.shape[-1], g.shape[1:]
    x_rows = _rows(_pad(x, padding), kw, out_w)
    g_t = g.reshape(-1, o).T  # [O, N]: g^T on the left is the faster operand order for XLA:CPU's dot
    dw = jnp.stack([
        jnp.dot(g_t, x_rows[:, i : i + out_h].reshape(-1, kw * c), preferred_element_type=_ACC).reshape(o, kw, c)
        for i in range(kh)
    ])  # [kh, O, kw, C]
    return dw.transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=None)
def _make(padding, x_dtype, w_dtype):
    (pt, pb), (pl, pr) = padding

    @jax.custom_vjp
    def conv(x, w):
        return _conv_rows(x.astype(_COMPUTE), w.astype(_COMPUTE), padding)

    def fwd(x, w):
        x, w = x.astype(_COMPUTE), w.astype(_COMPUTE)
        return _conv_rows(x, w, padding), (x, w)

    def bwd(res, g):
        x, w = res
        kh, kw = w.shape[:2]
        g = g.astype(_COMPUTE)
        w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
        dx = _conv_rows(g, w_t, ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)))
        dw = _kernel_grad_rows(x, g, padding, kh, kw)
        return dx.astype(x_dtype), dw.astype(w_dtype)

    conv.defvjp(fwd, bwd)
    return conv


def matmul_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                preferred_element_type=None):
    """Drop-in for `lax.conv_general_dilated`: bf16 matmuls with float32 accumulation, float32 output.

    See the module docstring for when the matmul form applies (otherwise this is
    `lax.conv_general_dilated` itself) and for the dtypes of the result and the
    gradients.
    """
    simple = (
        lhs.ndim == 4
        and rhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and all(d == 1 for d in [*(lhs_dilation or ()), *(rhs_dilation or ())])
        and feature_group_count == 1
        and batch_group_count == 1
        and precision is None
        and (preferred_element_type is None or np.dtype(preferred_element_type) == np.float32)
        and jnp.issubdtype(lhs.dtype, jnp.floating)
        and jnp.issubdtype(rhs.dtype, jnp.floating)
        and dims_match(dimension_numbers)
    )
    if simple:
        kernel = rhs.shape[:2]
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(lhs.shape[1:3], kernel, (1, 1), padding)
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)
        simple = all(0 <= p <= k - 1 for k, pads in zip(kernel, padding) for p in pads) and all(
            n + lo + hi >= k for n, k, (lo, hi) in zip(lhs.shape[1:3], kernel, padding))
    if not simple:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    return _make(padding, np.dtype(lhs.dtype), np.dtype(rhs.dtype))(lhs, rhs)
