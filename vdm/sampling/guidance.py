"""Guidance: steer any sampler towards a class (Ho & Salimans 2022; Dhariwal & Nichol 2021).

Classifier-free (Ho & Salimans 2022): a class-conditional model trained with
labels replaced by the null label at rate `model.label_dropout` gives both
ε̂(z, y) and ε̂(z, ∅); the guided denoiser is

    ε̃ = (1 + w) ε̂(z, y) − w ε̂(z, ∅)     (w = 0: the plain conditional model; GLIDE's guidance scale s = 1 + w, Nichol et al. 2021).

Classifier guidance (Dhariwal & Nichol 2021): a classifier p_φ(y | z_t, γ_t)
trained on noisy data tilts the score, ∇ log p(z | y) = ∇ log p(z) + ∇ log p_φ(y | z):

    ε̃ = ε̂(z) − s σ_t ∇_z log p_φ(y | z_t, γ_t).

Both return an `eps_hat_fn(z, gamma)`, so every sampler in `vdm.sampling`
uses them unchanged. The classifier network is `vdm.nets.classifier`, its
training `vdm.training.classifier`; a VDM's guided denoiser is
`vdm.model.VDM.guided_eps_hat_fn`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm.core import diffusion


def classifier_free(eps_cond, eps_null, weight: float):
    """(1 + w) ε̂(z, y) − w ε̂(z, ∅)."""
    return (1 + weight) * eps_cond - weight * eps_null


def classifier_free_eps_hat_fn(eps_hat_fn_for, labels, null_label: int, weight: float):
    """ε̃(z, γ) = (1 + w) ε̂(z, y) − w ε̂(z, ∅) for labels y [B]: one denoiser call on a doubled batch.

    eps_hat_fn_for(labels [2B]) -> eps_hat_fn(z [2B, ...], γ [2B]): the conditional denoiser
    for given labels; null_label: the label that stands for ∅. w = 0: eps_hat_fn_for(labels).
    """
    labels = jnp.asarray(labels, jnp.int32)
    if weight == 0:
        return eps_hat_fn_for(labels)
    eps_both = eps_hat_fn_for(jnp.concatenate([labels, jnp.full_like(labels, null_label)]))

    def eps_hat(z, gamma):
        e_cond, e_null = jnp.split(eps_both(jnp.concatenate([z, z]), jnp.concatenate([gamma, gamma])), 2)
        return classifier_free(e_cond, e_null, weight)

    return eps_hat


def classifier_guided_eps_hat_fn(eps_hat_fn, log_prob_fn, labels, scale: float):
    """ε̃(z, γ) = ε̂(z, γ) − s σ_t ∇_z log p(y | z, γ) for labels [B]; log_prob_fn(z, γ) -> [B, classes]."""
    labels = jnp.asarray(labels, jnp.int32)

    def log_p_y(z, gamma):
        return jnp.sum(jnp.take_along_axis(log_prob_fn(z, gamma), labels[:, None], -1))

    def eps_hat(z, gamma):
        sigma = jnp.sqrt(jax.nn.sigmoid(diffusion.expand_gamma(gamma, z)))
        return eps_hat_fn(z, gamma) - scale * sigma * jax.grad(log_p_y)(z, gamma)

    return eps_hat
