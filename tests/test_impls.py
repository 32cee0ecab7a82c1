"""Network implementations (model.impl): reference and cpu compute the same function; auto picks by backend.

The exactness guard: the paper's architecture at small width gives the same
per-example bits/dim and gradients with model.impl = reference and cpu. Also the
loop-friendly convolution of the cpu form (same values and gradients as lax's,
in and out of loops), mixed precision (model.dtype = bfloat16), and one network
evaluation per training step whatever the objective.
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


def _model(**overrides):
    from vdm.config.validation import apply_overrides, load_config_file
    from vdm.model import VDM

    c = apply_overrides(load_config_file("configs/tiny.py"), {
        "model.channels": 16, "model.num_blocks": 2, "model.dropout": 0.1, "model.scan_blocks": True,
        "model.attention_per_block": True, "model.fourier_features": True, "data.image_shape": (8, 8, 3),
        "data.vocab_size": 256, "loss.decoder_window": 3, **overrides})
    return VDM.from_config(c)


def _perturbed(params, scale=0.05):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def _tree_rel(a, b):
    num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    return (num / sum(float(jnp.sum(y**2)) for y in jax.tree.leaves(b))) ** 0.5


BATCH = {"images": np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)), "labels": np.zeros(8, np.int32)}


# the dropout variants take 90-115 s each on 2 cores: in `make test-all` (CI), not in `make test`
@pytest.mark.parametrize("scan,dropout", [pytest.param(True, 0.1, marks=pytest.mark.slow),
                                          pytest.param(False, 0.1, marks=pytest.mark.slow), (True, 0.0)])
def test_exactness_guard_reference_and_cpu_impls_keep_the_bits_per_dim(scan, dropout):
    """Paper architecture at width 16 (Fourier features, attention in every block, middle attention), scan or
    loop, dropout on (same PRNG => same masks) or off: per-example bpd within 1e-5 relative, gradients within
    1e-5 over the whole tree."""
    overrides = {"model.scan_blocks": scan, "model.dropout": dropout}
    ref, cpu = _model(**overrides, **{"model.impl": "reference"}), _model(**overrides, **{"model.impl": "cpu"})
    assert (ref.net.ops.name, cpu.net.ops.name) == ("reference", "cpu")
    params = _perturbed(jax.jit(ref.init)(jax.random.key(0)))
    key = jax.random.key(2)
    (loss_r, terms_r), g_r = jax.jit(lambda p: ref.loss_and_grads(p, BATCH, key))(params)
    (loss_c, terms_c), g_c = jax.jit(lambda p: cpu.loss_and_grads(p, BATCH, key))(params)
    np.testing.assert_allclose(terms_c["bpd"], terms_r["bpd"], rtol=1e-5)
    np.testing.assert_allclose(loss_c, loss_r, rtol=1e-5)
    assert _tree_rel(g_c, g_r) < 1e-5
    if dropout:  # not vacuous: dropout changes the loss, so equal losses mean equal masks
        (loss_off, _), _ = jax.jit(lambda p: _model(**{"model.scan_blocks": scan, "model.dropout": 0.0})
                                   .loss_and_grads(p, BATCH, key))(params)
        assert abs(float(loss_off) - float(loss_r)) > 1e-4 * abs(float(loss_r))


def test_reference_impl_has_no_custom_gradient_prng_or_loop():
    """model.impl = reference: plain flax / JAX only. The train step's program (blocks unrolled) contains no
    custom VJP, no loop (lax.map attention) and no PRNG other than JAX's threefry; the cpu form does loop."""
    import flax.linen as nn

    from vdm.nets.ops import make_ops, reference_attention

    ops = make_ops("reference", "float32", scanned=True)
    assert ops.conv_fn is None and ops.norm_cls is nn.GroupNorm and ops.dropout_cls is nn.Dropout
    assert ops.attention is reference_attention

    def program(impl, **extra):
        model = _model(**{"model.impl": impl, "model.scan_blocks": False, **extra})
        params = jax.eval_shape(model.init, jax.random.key(0))  # a jaxpr needs only the shapes
        batch = {"images": np.zeros((8, *model.image_shape), np.int32), "labels": np.zeros(8, np.int32)}
        return str(jax.make_jaxpr(lambda p: model.loss_and_grads(p, batch, jax.random.key(2)))(params))

    ref = program("reference")
    for primitive in ("custom_vjp", "while[", "scan["):  # (JAX's own softplus is a custom_jvp: allowed)
        assert primitive not in ref, primitive
    assert "random_bits" in ref and "key<fry>" in ref  # dropout's bits: JAX's own threefry keys
    # the same check sees the cpu forms: attention over blocks of 256 queries (lax.map) at 32 x 32 positions
    assert "scan[" in program("cpu", **{"data.image_shape": (32, 32, 3), "model.num_blocks": 1})


def test_auto_impl_is_cpu_on_the_cpu_backend_and_reference_elsewhere(monkeypatch):
    from vdm.nets import ops

    assert ops.resolve_impl("auto", "cpu") == "cpu"
    assert ops.resolve_impl("auto", "gpu") == "reference" and ops.resolve_impl("auto", "tpu") == "reference"
    assert ops.resolve_impl("cpu", "gpu") == "cpu" and ops.resolve_impl("reference", "cpu") == "reference"
    assert _model(**{"model.impl": "auto"}).net.ops.name == "cpu"  # this machine's backend
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _model(**{"model.impl": "auto"}).net.ops.name == "reference"
    with pytest.raises(ValueError, match="unknown network implementation 'fast'"):
        ops.resolve_impl("fast")


def test_removed_speed_keys_name_model_impl():
    from vdm.config.validation import ConfigError, apply_overrides, load_config_file

    with pytest.raises(ConfigError, match="'model.fast_norm' was removed: .*'model.impl'"):
        apply_overrides(load_config_file("configs/tiny.py"), {"model.fast_norm": False})


def test_weighted_step_costs_what_the_elbo_step_costs():
    """One network evaluation per training step: the L_simple (eps_mse) and sigmoid-weighted steps' XLA FLOP
    counts are within 5% of the ELBO step's (evaluating the network a second time for L_simple added ~20% at
    digits size)."""
    from vdm.training import optim
    from vdm.training.steps import create_train_state, make_train_step

    def flops(weighting):
        model = _model(**{"loss.weighting": weighting, "schedule.name": "alpha_cosine", "model.scan_blocks": False,
                          "model.impl": "reference", "data.image_shape": (8, 8, 1), "data.vocab_size": 17,
                          "model.num_blocks": 1, "model.attention_per_block": False})  # 3 traces: a small net
        tx, lr = optim.make_optimizer(model_config.optim, 10)
        state = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0)))
        batch = {"images": jnp.zeros((1, 8, 8, 8, 1), jnp.int32), "labels": jnp.zeros((1, 8), jnp.int32)}
        step = make_train_step(model, tx, lr, 0.99, donate=False)
        # the lowered (unoptimised) program's count: no compile needed, and XLA's optimisations cannot hide a
        # second network evaluation there
        cost = step.lower(state, batch, jax.random.key(1)).cost_analysis()
        return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

    from vdm.config.validation import load_config_file

    model_config = load_config_file("configs/tiny.py")
    elbo = flops("elbo")
    for weighting in ("eps_mse", "sigmoid"):
        other = flops(weighting)
        assert abs(other - elbo) <= 0.05 * elbo, (weighting, other, elbo)


@pytest.mark.slow  # trains a tiny model 150 steps in each dtype (~105 s on 2 cores): CI's make test-all
def test_bfloat16_model_close_to_float32_and_trains():
    """model.dtype = bfloat16 on a tiny digits model trained 150 steps in float32: finite loss and gradients,
    per-example bpd within 2% of float32 on the same parameters; parameters stay float32; 40 bf16 steps
    lower the loss."""
    from sklearn.datasets import load_digits

    from vdm.config.validation import apply_overrides, load_config_file
    from vdm.training import optim
    from vdm.model import VDM
    from vdm.training.steps import create_train_state, make_train_step

    images = load_digits().images.astype(np.int32)[..., None]  # 0..16: V = 17
    rng = np.random.default_rng(0)

    def setup(dtype):
        c = apply_overrides(load_config_file("configs/tiny.py"), {
            "model.dtype": dtype, "model.channels": 16, "model.dropout": 0.0, "optim.learning_rate": 3e-3,
            "training.batch_size": 32})
        model = VDM.from_config(c)
        tx, lr = optim.make_optimizer(c.optim, 1000)
        return model, tx, make_train_step(model, tx, lr, 0.99, donate=False)

    def batches(n, k):
        return {"images": jnp.asarray(images[rng.integers(0, len(images), (n, k, 32))]),
                "labels": jnp.zeros((n, k, 32), jnp.int32)}

    m32, tx, step32 = setup("float32")
    state = create_train_state(m32, tx, jax.random.key(0))
    train = batches(150, 1)
    for i in range(150):
        state, _ = step32(state, jax.tree.map(lambda x: x[i], train), jax.random.key(1))
    m16, tx16, step16 = setup("bfloat16")
    eval_batch = {"images": jnp.asarray(images[:64]), "labels": jnp.zeros(64, jnp.int32)}
    key = jax.random.key(3)
    bpd32 = jax.jit(lambda p: m32.elbo_terms(p, eval_batch, key)["bpd"])(state.params)
    bpd16 = jax.jit(lambda p: m16.elbo_terms(p, eval_batch, key)["bpd"])(state.params)
    assert np.all(np.isfinite(bpd16))
    np.testing.assert_allclose(bpd16, bpd32, rtol=0.02)
    assert float(np.max(np.abs(bpd16 - bpd32))) > 0  # the bf16 network really computes in bf16
    (loss, _), grads = jax.jit(lambda p: m16.loss_and_grads(p, eval_batch, key))(state.params)
    assert np.isfinite(float(loss)) and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    state16 = create_train_state(m16, tx16, jax.random.key(0))
    losses = []
    train = batches(40, 1)
    for i in range(40):
        state16, metrics = step16(state16, jax.tree.map(lambda x: x[i], train), jax.random.key(4))
        losses.append(float(metrics["loss"][0]))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state16.params))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
