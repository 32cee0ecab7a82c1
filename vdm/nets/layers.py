"""Building blocks of the VDM score network (Flax linen).

Shapes: images are NHWC ``[B, H, W, C]``; the conditioning vector is ``[B, E]``.
Every block takes an `Ops` (`vdm.nets.ops`): how its convolutions, GroupNorms,
attention and dropout run, and in which dtype.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from vdm.nets.cpu.dropout import DROPOUT_MASK
from vdm.nets.ops import Ops


def num_groups(channels: int, norm_groups: int = 0) -> int:
    """GroupNorm's group count: `norm_groups` if > 0, else gcd(32, C / 4) (groups of at least 4 channels).

    The default is 32 groups at 128 channels (the paper), 8 at 32: never one channel
    per group. The ResNet blocks add the time / class conditioning as a per-channel
    constant just before a GroupNorm, and a group of one channel subtracts exactly
    that constant (the network would never see the noise level). norm_groups = 32
    is the official network's choice at every width (flax's default).
    """
    return norm_groups if norm_groups > 0 else math.gcd(32, max(1, channels // 4))


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


# The values a ResNet block keeps for its backward pass under `RECOMPUTE_POLICY` (named with checkpoint_name).
CONV1_OUTPUT = "resnet_conv1_output"
# Keep conv1's output (+ conditioning) and, where the Ops names it, the dropout mask; recompute the
# GroupNorms, swishes and the masked product from them and the block input in the backward pass.
RECOMPUTE_POLICY = jax.checkpoint_policies.save_only_these_names(CONV1_OUTPUT, DROPOUT_MASK)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 (+ projected conditioning) -> GroupNorm -> swish -> dropout -> conv3x3, + input.

    The output conv and the conditioning projection start at zero, so a fresh
    block is the identity (plus a 1x1 projection when the channel count changes).
    Under `jax.checkpoint(..., policy=RECOMPUTE_POLICY)` it keeps only conv1's
    output (and a named dropout mask) for the backward pass.
    """

    out_ch: int
    dropout: float = 0.0
    deterministic: bool = True
    ops: Ops = Ops()
    norm_groups: int = 0

    @nn.compact
    def __call__(self, x, cond):
        ops, c_in = self.ops, x.shape[-1]
        h = nn.swish(ops.group_norm(num_groups(c_in, self.norm_groups))(x))
        h = ops.conv3x3(self.out_ch, name="conv1")(h)
        h = h + ops.dense(self.out_ch, use_bias=False, kernel_init=nn.initializers.zeros, name="cond_proj")(cond)[
            :, None, None, :
        ]
        h = nn.swish(ops.group_norm(num_groups(self.out_ch, self.norm_groups))(checkpoint_name(h, CONV1_OUTPUT)))
        h = ops.dropout(self.dropout, name="Dropout_0")(h, deterministic=self.deterministic)
        h = ops.conv3x3(self.out_ch, kernel_init=nn.initializers.zeros, name="conv2")(h)
        if c_in != self.out_ch:
            x = ops.dense(self.out_ch, name="nin_shortcut")(x)
        return x.astype(jnp.float32) + h.astype(jnp.float32)


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual, zero-initialised output projection.

    x + W_o softmax(q k^T / sqrt(C)) v with q, k, v = W_{q,k,v} GroupNorm(x), [B, H, W, C] -> same.
    """

    ops: Ops = Ops()
    norm_groups: int = 0

    @nn.compact
    def __call__(self, x):
        ops, (b, hh, ww, c) = self.ops, x.shape
        h = ops.group_norm(num_groups(c, self.norm_groups))(x)
        q, k, v = (ops.dense(c, name=name)(h).reshape(b, hh * ww, c) for name in ("q", "k", "v"))
        h = ops.attention(q, k, v).reshape(b, hh, ww, c)
        return x + ops.dense(c, kernel_init=nn.initializers.zeros, name="proj_out")(h).astype(jnp.float32)
