"""A noise-conditional classifier p_φ(y | z_t, γ_t) for classifier guidance (Dhariwal & Nichol 2021)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vdm.nets.layers import timestep_embedding


class NoisyClassifier(nn.Module):
    """p_φ(y | z_t, γ_t): a small conv net on z [B, H, W, C], conditioned on γ [B], -> logits [B, num_classes]."""

    num_classes: int
    channels: int = 64
    num_layers: int = 3
    gamma_min: float = -13.3
    gamma_max: float = 5.0

    @nn.compact
    def __call__(self, z, gamma):
        t = (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
        emb = nn.swish(nn.Dense(4 * self.channels)(timestep_embedding(1000 * t, self.channels)))
        norm = lambda: nn.GroupNorm(num_groups=min(8, self.channels))  # noqa: E731
        h = nn.Conv(self.channels, (3, 3))(z)
        for _ in range(self.num_layers):
            r = nn.Conv(self.channels, (3, 3))(nn.swish(norm()(h)))
            r = r + nn.Dense(self.channels)(emb)[:, None, None, :]
            h = h + nn.Conv(self.channels, (3, 3))(nn.swish(norm()(r)))
        h = nn.Dense(4 * self.channels)(h.reshape(h.shape[0], -1))  # no norm before this: it would erase position
        return nn.Dense(self.num_classes)(nn.swish(jnp.concatenate([h, emb], -1)))
