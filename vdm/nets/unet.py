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

With `scan_blocks`, the N identical down blocks and the N + 1 identical up
blocks each run under `nn.scan`: one compiled block per stack, so compile time
stays flat as depth grows.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vdm.nets.layers import (
    RECOMPUTE_POLICY,
    AttnBlock,
    Base2FourierFeatures,
    ResnetBlock,
    conv3x3,
    group_norm,
    timestep_embedding,
)


class _DownLayer(nn.Module):
    channels: int
    dropout: float
    attention: bool
    deterministic: bool
    loop_friendly_conv: bool = False
    fast_attention: bool = False
    fast_norm: bool = False

    @nn.compact
    def __call__(self, h, cond):
        h = ResnetBlock(self.channels, self.dropout, self.deterministic, self.loop_friendly_conv, self.fast_norm,
                        name="block")(h, cond)
        if self.attention:
            h = AttnBlock(self.fast_attention, self.fast_norm, name="attn")(h)
        return h, h


class _UpLayer(nn.Module):
    channels: int
    dropout: float
    attention: bool
    deterministic: bool
    loop_friendly_conv: bool = False
    fast_attention: bool = False
    fast_norm: bool = False

    @nn.compact
    def __call__(self, h, skip, cond):
        h = ResnetBlock(self.channels, self.dropout, self.deterministic, self.loop_friendly_conv, self.fast_norm,
                        name="block")(jnp.concatenate([h, skip], axis=-1), cond)
        if self.attention:
            h = AttnBlock(self.fast_attention, self.fast_norm, name="attn")(h)
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
      dropout, attention_per_block, fourier (start, stop, step, scale) or None, cond_dim,
      num_classes (0: unconditional), scan_blocks, input_skip (add z to the output,
      the official "base measure": eps_hat = z at initialisation), loop_friendly_conv
      (3x3 convolutions with a gradient that stays fast inside nn.scan on XLA:CPU;
      same parameters and values, see vdm.nets.cpu.conv), fast_attention (AttnBlock's
      fast form: the same function, blocked queries, fewer passes), fast_norm (vdm.nets.cpu.norm.GroupNorm
      instead of flax's: the same function and parameters, faster statistics), recompute
      (each down / up block keeps only its conv1 output and dropout mask for the backward
      pass and recomputes the rest: the same values, far less memory traffic; with scan_blocks
      it saves stacking ~10 activations per block).

    Call: (z [B,H,W,C], gamma [B], cond [B, cond_dim] | None, labels [B] int | None,
           deterministic) -> [B, H, W, out_channels].
    """

    channels: int = 128
    num_blocks: int = 32
    out_channels: int = 3
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    dropout: float = 0.1
    attention_per_block: bool = False
    fourier: tuple | None = (6, 8, 1, 1.0)  # (start, stop, step, scale) or None
    cond_dim: int = 1
    num_classes: int = 0
    scan_blocks: bool = True
    input_skip: bool = True
    loop_friendly_conv: bool = False
    fast_attention: bool = False
    fast_norm: bool = False
    recompute: bool = False

    @nn.compact
    def __call__(self, z, gamma, cond=None, labels=None, deterministic=True):
        b = z.shape[0]
        gamma = jnp.broadcast_to(jnp.reshape(gamma, (-1,)), (b,))
        t = (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
        emb = timestep_embedding(1000.0 * t, self.channels)
        if self.cond_dim:
            cond = jnp.zeros((b, self.cond_dim), z.dtype) if cond is None else cond.astype(z.dtype)
            emb = jnp.concatenate([emb, cond], axis=-1)
        emb = nn.swish(nn.Dense(4 * self.channels, name="dense0")(emb))
        emb = nn.swish(nn.Dense(4 * self.channels, name="dense1")(emb))
        if self.num_classes:
            if labels is None:
                labels = jnp.full((b,), self.num_classes, jnp.int32)  # the null label
            emb = emb + nn.Embed(self.num_classes + 1, 4 * self.channels, name="label_embedding")(labels)

        h = z
        if self.fourier is not None:
            h = jnp.concatenate([z, Base2FourierFeatures(*self.fourier, name="fourier")(z)], axis=-1)
        lf = self.loop_friendly_conv
        h = conv3x3(self.channels, lf, name="conv_in")(h)

        layer_kwargs = dict(
            channels=self.channels,
            dropout=self.dropout,
            attention=self.attention_per_block,
            deterministic=deterministic,
            loop_friendly_conv=lf,
            fast_attention=self.fast_attention,
            fast_norm=self.fast_norm,
        )
        h0 = h
        stack = dict(scan=self.scan_blocks, recompute=self.recompute, **layer_kwargs)
        h, skips = _stack(_DownLayer, self.num_blocks, in_axes=(nn.broadcast,), name="down", **stack)(h, emb)

        fast_norm = self.fast_norm
        h = ResnetBlock(self.channels, self.dropout, deterministic, lf, fast_norm, name="mid_block_1")(h, emb)
        h = AttnBlock(self.fast_attention, fast_norm, name="mid_attn")(h)
        h = ResnetBlock(self.channels, self.dropout, deterministic, lf, fast_norm, name="mid_block_2")(h, emb)

        skips = jnp.concatenate([h0[None], skips], axis=0)[::-1]  # N + 1 skips, last first
        h, _ = _stack(_UpLayer, self.num_blocks + 1, in_axes=(0, nn.broadcast), name="up", **stack)(h, skips, emb)

        h = nn.swish(group_norm(h.shape[-1], self.fast_norm)(h))
        out = conv3x3(self.out_channels, lf, kernel_init=nn.initializers.zeros, name="conv_out")(h)
        if self.input_skip:
            out = out + z
        return out
