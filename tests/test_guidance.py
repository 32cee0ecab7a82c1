"""Guidance with real networks: the doubled-batch classifier-free call, and a noisy classifier that learns."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.config.validation import load_config_file
from vdm.data import pipeline as data
from vdm.training import classifier
from vdm.model import VDM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(conditional=True):
    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    config.model.class_conditional = conditional
    model = VDM.from_config(config)
    params = jax.jit(model.init)(jax.random.key(0))
    # fresh output layers are zero (the net starts as eps_hat = z): perturb every weight so labels matter
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return model, params


def test_classifier_free_guidance_combines_conditional_and_null_predictions():
    model, params = _model()
    z = jax.random.normal(jax.random.key(2), (6, 8, 8, 1))
    gamma = jnp.linspace(-5.0, 3.0, 6)
    labels = jnp.array([0, 1, 2, 3, 4, 5])
    # compiled, not run op by op: each eager op of the U-Net would be compiled on its own
    eps = jax.jit(lambda p, y: model.eps_hat_fn(p, labels=y)(z, gamma))
    e_cond, e_null = eps(params, labels), eps(params, jnp.full((6,), model.num_classes))
    assert float(jnp.max(jnp.abs(e_cond - e_null))) > 1e-3  # labels do change the prediction
    guided_fn = jax.jit(lambda p, w: model.guided_eps_hat_fn(p, labels, w)(z, gamma), static_argnums=1)
    for w in (0.0, 1.0, 3.0):
        np.testing.assert_allclose(guided_fn(params, w), (1 + w) * e_cond - w * e_null, rtol=1e-4, atol=1e-5)


def test_classifier_free_guidance_needs_a_conditional_model():
    model, params = _model(conditional=False)
    with pytest.raises(ValueError, match="class-conditional"):
        model.guided_eps_hat_fn(params, jnp.zeros(2, jnp.int32), 1.0)


@pytest.mark.slow  # trains a noisy classifier on digits (~30 s on 2 cores)
def test_noisy_classifier_learns_digits_and_degrades_with_noise():
    ds = data.load_dataset("digits")
    gamma_fn = lambda t: -8.0 + 13.0 * t  # noqa: E731
    net, params = classifier.train_noisy_classifier(jax.random.key(0), ds.train.images, ds.train.labels, 17, gamma_fn,
                                                  10, num_steps=300, batch_size=64, channels=16, num_layers=2,
                                                  gamma_min=-8.0, gamma_max=5.0)
    clean = classifier.classifier_accuracy(net, params, ds.test.images, ds.test.labels, 17, gamma_fn, 0.0, jax.random.key(1))
    noisy = classifier.classifier_accuracy(net, params, ds.test.images, ds.test.labels, 17, gamma_fn, 1.0, jax.random.key(1))
    assert clean > 0.8, clean
    assert noisy < 0.5, noisy  # at gamma = 5 almost nothing of the digit is left
