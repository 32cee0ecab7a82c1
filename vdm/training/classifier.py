"""Training the noise-conditional classifier of classifier guidance, and reading it as log p_φ(y | z_t, γ_t).

`train_noisy_classifier` fits `vdm.nets.classifier.NoisyClassifier` with
cross-entropy on z_t ~ q(z_t | x) at t ~ U(0, 1) under a diffusion model's
schedule; `noisy_classifier_log_prob_fn` gives the `log_prob_fn` that
`vdm.sampling.guidance.classifier_guided_eps_hat_fn` takes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm.core import diffusion, losses
from vdm.nets.classifier import NoisyClassifier


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
