"""Building blocks of the VDM score network (Flax linen).

Shapes: images are NHWC ``[B, H, W, C]``; the conditioning vector is ``[B, E]``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from vdm.nets.conv import loop_friendly_conv
import jax.numpy as jnp


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of at least 4 channels: 32 groups at 128 channels (the paper), 8 at 32.

    Never one channel per group: the ResNet blocks add the time / class conditioning
    as a per-channel constant just before a GroupNorm, and a group of one channel
    subtracts exactly that constant (the network would never see the noise level).
    """
    return nn.GroupNorm(num_groups=math.gcd(32, max(1, channels // 4)))


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
    """Sinusoidal embedding of a scalar per example (Transformer / DDPM style).

    Args:
      t: [B] float. dim: even embedding size.
    Returns:
      [B, dim] = [sin(t w_k), cos(t w_k)], w_k = max_period^(-k / (dim/2 - 1)).
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = t[:, None].astype(jnp.float32) * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class Base2FourierFeatures(nn.Module):
    """sin / cos of the input at frequencies 2^k * 2 pi * scale, k in range(start, stop, step).

    [B, H, W, C] -> [B, H, W, 2 C F] with F = len(range(start, stop, step)). With
    scale = 1 (the paper), k = 7 and 8-bit data on a 2/256 grid, one period spans
    exactly one bin; scale = V / 256 gives the same alignment for V levels.
    """

    start: int = 6
    stop: int = 8
    step: int = 1
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        freqs = jnp.arange(self.start, self.stop, self.step, dtype=jnp.float32)
        w = 2.0**freqs * 2 * jnp.pi * self.scale
        h = (x[..., None] * w).reshape(*x.shape[:-1], -1)
        return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


def conv3x3(features: int, loop_friendly: bool = False, **kwargs) -> nn.Conv:
    """A 3x3 'SAME' nn.Conv; loop_friendly: the same parameters and forward value, a gradient fast in loops."""
    if loop_friendly:
        kwargs["conv_general_dilated"] = loop_friendly_conv
    return nn.Conv(features, (3, 3), **kwargs)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 (+ projected conditioning) -> GroupNorm -> swish -> dropout -> conv3x3.

    The output conv and the conditioning projection start at zero, so a fresh
    block is the identity (plus a 1x1 projection when the channel count changes).
    """

    out_ch: int
    dropout: float = 0.0
    deterministic: bool = True
    loop_friendly_conv: bool = False  # see vdm.nets.conv

    @nn.compact
    def __call__(self, x, cond):
        c_in = x.shape[-1]
        h = nn.swish(group_norm(c_in)(x))
        h = conv3x3(self.out_ch, self.loop_friendly_conv, name="conv1")(h)
        h = h + nn.Dense(self.out_ch, use_bias=False, kernel_init=nn.initializers.zeros, name="cond_proj")(cond)[
            :, None, None, :
        ]
        h = nn.swish(group_norm(self.out_ch)(h))
        h = nn.Dropout(rate=self.dropout)(h, deterministic=self.deterministic)
        h = conv3x3(self.out_ch, self.loop_friendly_conv, kernel_init=nn.initializers.zeros, name="conv2")(h)
        if c_in != self.out_ch:
            x = nn.Dense(self.out_ch, name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual, zero-initialised output.

    deferred_norm: softmax(q k^T / sqrt(c)) v computed as (E v) / rowsum(E), E =
    exp(s - max s) with q pre-scaled: the same function (float32 rounding apart),
    two fewer passes over the [HW, HW] matrix forward and backward (25% faster
    on a CPU at 32x32).
    """

    deferred_norm: bool = False

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = group_norm(c)(x)
        q = nn.Dense(c, name="q")(h).reshape(b, hh * ww, c)
        k = nn.Dense(c, name="k")(h).reshape(b, hh * ww, c)
        v = nn.Dense(c, name="v")(h).reshape(b, hh * ww, c)
        if self.deferred_norm:
            s = jnp.einsum("bqc,bkc->bqk", q * (1.0 / math.sqrt(c)), k)
            e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
            h = (jnp.einsum("bqk,bkc->bqc", e, v) / jnp.sum(e, axis=-1)[..., None]).reshape(b, hh, ww, c)
        else:
            weights = nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c), axis=-1)
            h = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, hh, ww, c)
        return x + nn.Dense(c, kernel_init=nn.initializers.zeros, name="proj_out")(h)
