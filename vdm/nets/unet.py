"""The VDM score network: a U-Net without downsampling (Kingma et al. 2021, appendix B).

    input z [B, H, W, C]  (+ Fourier features of z)
    conv_in -> N down ResNet blocks -> mid (block, attention, block)
            -> N + 1 up ResNet blocks, each on concat(h, skip) -> GroupNorm, swish, conv_out

Conditioning on gamma_t: t~ = (gamma_t - gamma_min) / (gamma_max - gamma_min),
a sinusoidal embedding of 1000 t~, concatenated with an optional extra
conditioning vector (augmentation flags; zeros otherwise, as in the official
model), then two dense + swish layers to 4x the width. An optional class label
(index `num_classes` is the "null" label for classifier-free guidance) adds a
learned embedding.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vdm.nets.layers import RECOMPUTE_POLICY, AttnBlock, Base2FourierFeatures, ResnetBlock, num_groups, timestep_embedding
from vdm.nets.ops import Ops

# What this network computes for its parameters is versioned: `vdm.config.migrations.NETWORK_VERSION`, recorded in
# checkpoints and config.json. A change here that keeps the parameter shapes but changes the function raises it
# there, with a line in its NETWORK_VERSIONS (and, if old parameters can still compute it, a migration there).


class _DownLayer(nn.Module):
    channels: int
    dropout: float
    attention: bool
    deterministic: bool
    ops: Ops
    norm_groups: int

    @nn.compact
    def __call__(self, h, cond):
        h = ResnetBlock(self.channels, self.dropout, self.deterministic, self.ops, self.norm_groups, name="block")(h, cond)
        if self.attention:
            h = AttnBlock(self.ops, self.norm_groups, name="attn")(h)
        return h, h


class _UpLayer(nn.Module):
    channels: int
    dropout: float
    attention: bool
    deterministic: bool
    ops: Ops
    norm_groups: int

    @nn.compact
    def __call__(self, h, skip, cond):
        h = ResnetBlock(self.channels, self.dropout, self.deterministic, self.ops, self.norm_groups,
                        name="block")(jnp.concatenate([h, skip.astype(h.dtype)], axis=-1), cond)
        if self.attention:
            h = AttnBlock(self.ops, self.norm_groups, name="attn")(h)
        return h, None


def _stack(layer_cls, num, scan, in_axes, name, recompute=False, **kwargs):
    """Applies `num` copies of a layer, as one nn.scan or as a Python loop; recompute: under RECOMPUTE_POLICY."""
    if recompute:
        layer_cls = nn.remat(layer_cls, policy=RECOMPUTE_POLICY, prevent_cse=not scan)
    if scan:
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            length=num,
        )
        return scanned(name=name, **kwargs)

    def loop(h, *args):
        outs = []
        for i in range(num):
            per_step = [a[i] if ax == 0 else a for a, ax in zip(args, in_axes)]
            h, out = layer_cls(name=f"{name}_{i}", **kwargs)(h, *per_step)
            outs.append(out)
        return h, (None if outs[0] is None else jnp.stack(outs))

    return loop


class ScoreUNet(nn.Module):
    """Predicts eps (or x, v) from z_t and gamma_t.

    Attributes:
      channels: width of every ResNet block (paper: 128).
      num_blocks: N, the number of down blocks (paper: 32); N + 1 up blocks.
      out_channels: channels of the prediction (the data's channel count).
      gamma_min, gamma_max: the range used to normalise gamma_t for the time embedding.
      dropout: rate inside every ResNet block. attention_per_block: attention after every
        block too (the middle attention is always there).
      fourier: (start, stop, step, scale) of the input's Fourier features, or None.
      cond_dim: width of the extra conditioning vector. num_classes: 0 = unconditional.
      input_skip: add z to the output (the official "base measure": eps_hat = z at init).
      norm_groups: GroupNorm groups, 0 = gcd(32, C/4) (`vdm.nets.layers.num_groups`).
      scan_blocks: the N identical down blocks and the N + 1 up blocks each run under
        nn.scan (one compiled block per stack: compile time stays flat with depth).
      recompute: each block keeps only its conv1 output for the backward pass and
        recomputes the rest (`vdm.nets.layers.RECOMPUTE_POLICY`): less memory, more FLOPs.
      ops: how convolutions, norms, attention and dropout run, and in which dtype (`vdm.nets.ops`).

    Call: (z [B,H,W,C], gamma [B], cond [B, cond_dim] | None, labels [B] int | None,
           deterministic) -> [B, H, W, out_channels] float32.
    """

    channels: int = 128
    num_blocks: int = 32
    out_channels: int = 3
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    dropout: float = 0.1
    attention_per_block: bool = False
    fourier: tuple | None = (6, 8, 1, 1.0)
    cond_dim: int = 1
    num_classes: int = 0
    input_skip: bool = True
    norm_groups: int = 0
    scan_blocks: bool = True
    recompute: bool = False
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, z, gamma, cond=None, labels=None, deterministic=True):
        ops, b = self.ops, z.shape[0]
        gamma = jnp.broadcast_to(jnp.reshape(gamma, (-1,)), (b,))
        t = (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
        emb = timestep_embedding(1000.0 * t, self.channels)
        if self.cond_dim:
            cond = jnp.zeros((b, self.cond_dim), jnp.float32) if cond is None else cond.astype(jnp.float32)
            emb = jnp.concatenate([emb, cond], axis=-1)
        emb = nn.swish(ops.dense(4 * self.channels, name="dense0")(emb))
        emb = nn.swish(ops.dense(4 * self.channels, name="dense1")(emb))
        if self.num_classes:
            if labels is None:
                labels = jnp.full((b,), self.num_classes, jnp.int32)  # the null label
            emb = emb + nn.Embed(self.num_classes + 1, 4 * self.channels, name="label_embedding")(labels)

        h = z
        if self.fourier is not None:
            h = jnp.concatenate([z, Base2FourierFeatures(*self.fourier, name="fourier")(z)], axis=-1)
        h = ops.conv3x3(self.channels, name="conv_in")(h).astype(jnp.float32)

        block = dict(channels=self.channels, dropout=self.dropout, attention=self.attention_per_block,
                     deterministic=deterministic, ops=ops, norm_groups=self.norm_groups)
        stack = dict(scan=self.scan_blocks, recompute=self.recompute, **block)
        h0 = h
        h, skips = _stack(_DownLayer, self.num_blocks, in_axes=(nn.broadcast,), name="down", **stack)(h, emb)

        mid = (self.channels, self.dropout, deterministic, ops, self.norm_groups)
        h = ResnetBlock(*mid, name="mid_block_1")(h, emb)
        h = AttnBlock(ops, self.norm_groups, name="mid_attn")(h)
        h = ResnetBlock(*mid, name="mid_block_2")(h, emb)

        skips = jnp.concatenate([h0[None], skips], axis=0)[::-1]  # N + 1 skips, last first
        h, _ = _stack(_UpLayer, self.num_blocks + 1, in_axes=(0, nn.broadcast), name="up", **stack)(h, skips, emb)

        h = nn.swish(ops.group_norm(num_groups(h.shape[-1], self.norm_groups))(h))
        out = ops.conv3x3(self.out_channels, kernel_init=nn.initializers.zeros, name="conv_out")(h)
        out = out.astype(jnp.float32)
        if self.input_skip:
            out = out + z
        return out
