"""Guidance: steer any sampler towards a class (Ho & Salimans 2022; Dhariwal & Nichol 2021).

Classifier-free (Ho & Salimans 2022): a class-conditional model trained with
labels replaced by the null label at rate `model.label_dropout` gives both
ε̂(z, y) and ε̂(z, ∅); the guided denoiser is

    ε̃ = (1 + w) ε̂(z, y) − w ε̂(z, ∅)     (w = 0: the plain conditional model; GLIDE's guidance scale s = 1 + w, Nichol et al. 2021).

Classifier guidance (Dhariwal & Nichol 2021): a classifier p_φ(y | z_t, γ_t)
trained on noisy data tilts the score, ∇ log p(z | y) = ∇ log p(z) + ∇ log p_φ(y | z):

    ε̃ = ε̂(z) − s σ_t ∇_z log p_φ(y | z_t, γ_t).

Both return an `eps_hat_fn(z, gamma)`, so every sampler in `vdm.sampling` /
`vdm.sde` uses them unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm.core import diffusion, losses
from vdm.nets.layers import timestep_embedding


def classifier_free(eps_cond, eps_null, weight: float):
    """(1 + w) ε̂(z, y) − w ε̂(z, ∅)."""
    return (1 + weight) * eps_cond - weight * eps_null


def classifier_free_eps_hat_fn(model, params, labels, weight: float):
    """ε̃(z, γ) = (1 + w) ε̂(z, y) − w ε̂(z, ∅) for labels [B]; one network call on a doubled batch."""
    if not model.class_conditional:
        raise ValueError("classifier-free guidance needs a class-conditional model (model.class_conditional=True)")
    labels = jnp.asarray(labels, jnp.int32)
    if weight == 0:
        return model.eps_hat_fn(params, labels=labels)
    both = jnp.concatenate([labels, jnp.full_like(labels, model.num_classes)])

    def eps_hat(z, gamma):
        e = model.eps_hat_fn(params, labels=both)(jnp.concatenate([z, z]), jnp.concatenate([gamma, gamma]))
        e_cond, e_null = jnp.split(e, 2)
        return classifier_free(e_cond, e_null, weight)

    return eps_hat


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


def train_noisy_classifier(key, images, labels, vocab_size: int, gamma_fn, num_classes: int, num_steps: int = 2000,
                           batch_size: int = 128, learning_rate: float = 2e-3, **net_kwargs):
    """Trains a NoisyClassifier on z_t ~ q(z_t | x), t ~ U(0, 1), with cross-entropy. Returns (module, params).

    images: integer data [N, H, W, C]; labels [N]; gamma_fn: the diffusion model's schedule.
    """
    net = NoisyClassifier(num_classes, **net_kwargs)
    k_init, k_train = jax.random.split(key)
    params = net.init(k_init, jnp.zeros((1, *images.shape[1:])), jnp.zeros((1,)))["params"]
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, num_steps), weight_decay=1e-4)
    opt_state = tx.init(params)
    x_all = losses.scale_data(jnp.asarray(images), vocab_size)
    y_all = jnp.asarray(labels, jnp.int32)

    def loss_fn(params, x, y, key):
        k_t, k_eps = jax.random.split(key)
        gamma = gamma_fn(jax.random.uniform(k_t, (x.shape[0],)))
        z = diffusion.q_sample(x, gamma, jax.random.normal(k_eps, x.shape))
        logits = net.apply({"params": params}, z, gamma)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    @jax.jit
    def step(params, opt_state, i):
        k = jax.random.fold_in(k_train, i)
        idx = jax.random.choice(jax.random.fold_in(k, 1), x_all.shape[0], (batch_size,), replace=False)
        loss, grads = jax.value_and_grad(loss_fn)(params, x_all[idx], y_all[idx], k)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(num_steps):
        params, opt_state, _ = step(params, opt_state, i)
    return net, params


def classifier_accuracy(net, params, images, labels, vocab_size: int, gamma_fn, t: float, key) -> float:
    """Accuracy of p_φ(y | z_t) on noisy versions of integer images at time t."""
    x = losses.scale_data(jnp.asarray(images), vocab_size)
    gamma = gamma_fn(jnp.full((x.shape[0],), t))
    z = diffusion.q_sample(x, gamma, jax.random.normal(key, x.shape))
    pred = jnp.argmax(net.apply({"params": params}, z, gamma), -1)
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def noisy_classifier_log_prob_fn(net, params):
    """(z [B, ...], γ [B]) -> log p_φ(y | z_t, γ_t) [B, num_classes]."""
    return lambda z, gamma: jax.nn.log_softmax(net.apply({"params": params}, z, gamma))


def classifier_guided_eps_hat_fn(eps_hat_fn, log_prob_fn, labels, scale: float):
    """ε̃(z, γ) = ε̂(z, γ) − s σ_t ∇_z log p(y | z, γ) for labels [B]; log_prob_fn(z, γ) -> [B, classes]."""
    labels = jnp.asarray(labels, jnp.int32)

    def log_p_y(z, gamma):
        return jnp.sum(jnp.take_along_axis(log_prob_fn(z, gamma), labels[:, None], -1))

    def eps_hat(z, gamma):
        sigma = jnp.sqrt(jax.nn.sigmoid(diffusion.expand_gamma(gamma, z)))
        return eps_hat_fn(z, gamma) - scale * sigma * jax.grad(log_p_y)(z, gamma)

    return eps_hat
