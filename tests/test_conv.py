"""vdm.nets.cpu.conv: the loop-friendly convolution computes the same values and gradients as lax's, in and out of loops.

Also the exactness guard of the performance switches: a model with every speed
switch on gives the same bits/dim as the straightforward one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vdm.nets.cpu.conv import loop_friendly_conv

DIMS = ("NHWC", "HWIO", "NHWC")


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((3, 3), "VALID"), ((1, 1), "SAME"),
                                            ((3, 3), ((0, 2), (1, 0))), ((2, 3), ((1, 0), (1, 1)))])
def test_values_and_gradients_equal_lax(kernel, padding):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 7, 6, 5))
    w = jax.random.normal(kw, (*kernel, 5, 4))
    ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DIMS)  # noqa: E731
    ours = lambda x, w: loop_friendly_conv(x, w, (1, 1), padding, dimension_numbers=DIMS)  # noqa: E731
    y_ref, y = ref(x, w), ours(x, w)
    assert y.shape == y_ref.shape and bool(jnp.all(y == y_ref))
    g = jax.random.normal(kg, y.shape)
    for a, b in zip(jax.vjp(ours, x, w)[1](g), jax.vjp(ref, x, w)[1](g)):
        assert _rel(a, b) < 1e-5


def test_gradient_inside_scan_equals_unrolled_lax():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 6))
    ws = 0.2 * jax.random.normal(jax.random.key(2), (4, 3, 3, 6, 6))

    def net(ws, conv, scan):
        f = lambda h, w: jnp.tanh(conv(h, w, (1, 1), "SAME", dimension_numbers=DIMS))  # noqa: E731
        if scan:
            return jnp.sum(lax.scan(lambda h, w: (f(h, w), None), x, ws)[0] ** 2)
        h = x
        for w in ws:
            h = f(h, w)
        return jnp.sum(h**2)

    g_ours = jax.jit(jax.grad(lambda ws: net(ws, loop_friendly_conv, True)))(ws)
    g_ref = jax.jit(jax.grad(lambda ws: net(ws, lax.conv_general_dilated, False)))(ws)
    assert _rel(g_ours, g_ref) < 1e-5


def test_unsupported_settings_fall_back_to_lax():
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))
    w = jax.random.normal(jax.random.key(4), (3, 3, 4, 4))
    for kwargs in ({"window_strides": (2, 2)}, {"window_strides": (1, 1), "rhs_dilation": (2, 2)}):
        ref = lax.conv_general_dilated(x, w, padding="SAME", dimension_numbers=DIMS, **kwargs)
        assert bool(jnp.all(loop_friendly_conv(x, w, padding="SAME", dimension_numbers=DIMS, **kwargs) == ref))


def test_exactness_guard_every_speed_switch_keeps_the_bits_per_dim():
    """Every speed switch on (loop-friendly conv, fast attention, GroupNorm and dropout bits, recomputation,
    windowed decoder) vs all off, dropout on:
    per-example bpd within 1e-5 relative, gradients within 1e-5 over the whole tree."""
    from vdm.config.validation import apply_overrides, load_config_file
    from vdm.training.model import VDM

    def model(fast):
        c = apply_overrides(load_config_file("configs/tiny.py"), {
            "model.channels": 16, "model.num_blocks": 2, "model.dropout": 0.1, "model.scan_blocks": True,
            "model.attention_per_block": True, "data.image_shape": (8, 8, 3), "data.vocab_size": 256,
            "model.loop_friendly_conv": fast, "model.fast_attention": fast, "model.fast_norm": fast, "model.recompute": fast, "model.fast_dropout_rng": fast,
            "loss.decoder_window": 3 if fast else 0})
        return VDM.from_config(c)

    fast, plain = model(True), model(False)
    params = fast.init(jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
    batch = {"images": np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)), "labels": np.zeros(8, np.int32)}
    key = jax.random.key(2)
    # One compiled program per model: the training loss, its per-example terms (dropout on, the same masks
    # from the same key) and the gradients.
    (loss_f, terms_f), g_fast = jax.jit(lambda p: fast.loss_and_grads(p, batch, key))(params)
    (loss_p, terms_p), g_plain = jax.jit(lambda p: plain.loss_and_grads(p, batch, key))(params)
    np.testing.assert_allclose(terms_f["bpd"], terms_p["bpd"], rtol=1e-5)
    np.testing.assert_allclose(loss_f, loss_p, rtol=1e-5)
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)))
    den = sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(g_plain))
    assert (num / den) ** 0.5 < 1e-5
