"""A convolution whose backward pass stays fast inside loops (`nn.scan`, `lax.scan`) on XLA:CPU.

XLA:CPU runs the two convolutions of a convolution's gradient (input and
kernel) 10-30x slower inside a while loop than unrolled. `loop_friendly_conv`
computes the same forward convolution and a gradient built from ops that
stay fast in loops:

    dL/dx = conv(g, flip(W)^T)                          a forward convolution
    dL/dW[i, j] = sum_{b,h,w} x_pad[b, h+i, w+j, :]^T g[b, h, w, :]   one matmul per kernel row i
                                                        (the row's taps j side by side in channels)

for stride 1, no dilation, one feature group, NHWC / HWIO; anything else falls
back to `lax.conv_general_dilated`. The forward value is identical; gradients
agree to float32 rounding. Pass it to flax as
``nn.Conv(..., conv_general_dilated=loop_friendly_conv)``: parameters are
unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["loop_friendly_conv"]

_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DIMS)


def _make(padding):
    (pt, pb), (pl, pr) = padding

    @jax.custom_vjp
    def conv(x, w):
        return _conv(x, w, padding)

    def fwd(x, w):
        return _conv(x, w, padding), (x, w)

    def bwd(res, g):
        x, w = res
        kh, kw, c_in, c_out = w.shape
        w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
        dx = _conv(g, w_t, ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)))
        x_pad = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        out_h, out_w = g.shape[1], g.shape[2]
        # the kw horizontal taps side by side in channels: [B, H + pt + pb, out_w, kw * c_in]
        x_rows = jnp.concatenate([x_pad[:, :, j : j + out_w, :] for j in range(kw)], axis=-1)
        g_t = g.reshape(-1, c_out).T  # [c_out, N]: this operand order is the fast one for XLA:CPU's dot
        dw = jnp.stack([
            (g_t @ x_rows[:, i : i + out_h].reshape(-1, kw * c_in)).reshape(c_out, kw, c_in) for i in range(kh)
        ])  # [kh, c_out, kw, c_in]
        dw = dw.transpose(0, 2, 3, 1)
        return dx, dw

    conv.defvjp(fwd, bwd)
    return conv


def loop_friendly_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                       preferred_element_type=None):
    """Drop-in for `lax.conv_general_dilated` (see module docstring for when the custom gradient applies)."""
    simple = (
        tuple(window_strides) == (1, 1)
        and all(d == 1 for d in [*(lhs_dilation or ()), *(rhs_dilation or ())])
        and feature_group_count == 1
        and batch_group_count == 1
        and lhs.ndim == 4
        and dims_match(dimension_numbers)
        and precision is None
        and preferred_element_type is None
    )
    if not simple:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _make(padding)(lhs, rhs)


def dims_match(dimension_numbers) -> bool:
    """True for NHWC / HWIO / NHWC dimension numbers (as a tuple or lax.ConvDimensionNumbers)."""
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _DIMS)
    return tuple(dimension_numbers) == _DIMS
