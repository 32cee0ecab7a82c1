"""The score network: the paper's parameter count, per-module counts, shapes, scan == loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.config.validation import load_config_file
from vdm.nets import ScoreUNet
from vdm.nets.layers import AttnBlock, Base2FourierFeatures, ResnetBlock
from vdm.model import VDM


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_paper_model_has_the_official_parameter_count():
    model = VDM.from_config(load_config_file("configs/cifar10.py"))
    params = jax.eval_shape(model.init, jax.random.key(0))
    assert _count(params) == 30_578_181  # official implementation, network + 2 schedule parameters
    assert _count(params["schedule"]) == 2


@pytest.mark.parametrize(
    "module,x_shape,expected",
    [
        (ResnetBlock(128), (1, 4, 4, 128), 2 * 256 + 2 * (9 * 128 * 128 + 128) + 512 * 128),
        (ResnetBlock(128), (1, 4, 4, 256), 512 + 256 + 9 * 256 * 128 + 128 + 9 * 128 * 128 + 128 + 512 * 128 + 256 * 128 + 128),
        (AttnBlock(), (1, 4, 4, 128), 256 + 4 * (128 * 128 + 128)),
    ],
)
def test_block_parameter_counts(module, x_shape, expected):
    args = (jnp.zeros(x_shape), jnp.zeros((1, 512))) if isinstance(module, ResnetBlock) else (jnp.zeros(x_shape),)
    params = jax.eval_shape(module.init, jax.random.key(0), *args)
    assert _count(params) == expected


def test_fourier_features_shape_and_alignment():
    x = jnp.linspace(-1, 1, 6).reshape(1, 1, 2, 3)
    out = Base2FourierFeatures(6, 8, 1).apply({}, x)
    assert out.shape == (1, 1, 2, 3 * 2 * 2)
    # with scale V/256 the k = 7 sine vanishes at every bin centre of a V-level grid
    V = 17
    centres = 2 * (jnp.arange(V) + 0.5) / V - 1
    feats = Base2FourierFeatures(7, 8, 1, V / 256).apply({}, centres.reshape(1, 1, V, 1))
    np.testing.assert_allclose(feats[..., 0], 0.0, atol=1e-4)


def test_unet_shapes_identity_at_init_and_labels():
    net = ScoreUNet(channels=8, num_blocks=2, out_channels=3, dropout=0.1, num_classes=10, attention_per_block=True)
    z = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    params = jax.jit(net.init)(jax.random.key(1), z, jnp.zeros(2))  # one program each, not op by op
    out = jax.jit(net.apply)(params, z, jnp.array([-3.0, 2.0]), labels=jnp.array([1, 10]))
    assert out.shape == z.shape
    np.testing.assert_allclose(out, z, atol=1e-6)  # zero-initialised output conv + base measure
    assert "label_embedding" in params["params"]
    assert params["params"]["label_embedding"]["embedding"].shape == (11, 32)  # 10 classes + null


def test_scan_and_loop_compute_the_same_function():
    kwargs = dict(channels=8, num_blocks=3, out_channels=1, dropout=0.0)
    scan, loop = ScoreUNet(scan_blocks=True, **kwargs), ScoreUNet(scan_blocks=False, **kwargs)
    z = jax.random.normal(jax.random.key(0), (2, 5, 5, 1))
    p_scan = jax.jit(scan.init)(jax.random.key(1), z, jnp.zeros(2))["params"]
    # perturb the zero-initialised layers so the comparison is not trivial
    leaves, tree = jax.tree.flatten(p_scan)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    p_scan = jax.tree.unflatten(tree, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
    p_loop = {k: v for k, v in p_scan.items() if k not in ("down", "up")}
    for stack, n in (("down", 3), ("up", 4)):
        for i in range(n):
            p_loop[f"{stack}_{i}"] = jax.tree.map(lambda a: a[i], p_scan[stack])
    g = jnp.array([-5.0, 1.0])
    np.testing.assert_allclose(
        jax.jit(scan.apply)({"params": p_scan}, z, g), jax.jit(loop.apply)({"params": p_loop}, z, g), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("channels", [8, 32])
def test_time_and_label_conditioning_reach_the_output(channels):
    """Regression: with one channel per GroupNorm group the per-channel conditioning was normalised away."""
    from vdm.nets import ScoreUNet

    net = ScoreUNet(channels=channels, num_blocks=1, out_channels=1, gamma_min=-8.0, gamma_max=5.0, num_classes=10,
                    fourier=None, scan_blocks=False)
    z = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    params = jax.jit(net.init)(jax.random.key(1), z, jnp.zeros(2))["params"]
    leaves, tree = jax.tree.flatten(params)  # fresh output layers are zero: perturb every weight
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    apply = jax.jit(net.apply)
    out = lambda gamma, label: apply({"params": params}, z, jnp.full(2, gamma), None, jnp.full(2, label))  # noqa: E731
    scale = float(jnp.max(jnp.abs(out(0.0, 0))))
    assert float(jnp.max(jnp.abs(out(-4.0, 0) - out(2.0, 0)))) > 1e-2 * scale
    assert float(jnp.max(jnp.abs(out(0.0, 0) - out(0.0, 7)))) > 1e-2 * scale


def test_fast_group_norm_is_flax_group_norm():
    """Same parameter tree, values and gradients as flax's GroupNorm, also when the mean dwarfs the spread."""
    import flax.linen as nn

    from vdm.nets.cpu.norm import GroupNorm

    x = 3.0 + 0.5 * jax.random.normal(jax.random.key(0), (4, 8, 8, 32))
    ref = nn.GroupNorm(num_groups=8)
    params = ref.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)
    fast = GroupNorm(8)
    assert jax.tree.structure(fast.init(jax.random.key(1), x)) == jax.tree.structure(params)
    np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=2e-5, atol=2e-5)
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))  # noqa: E731
    g_fast = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(params, x)
    g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-5
    # each group normalised to mean 0, variance 1 (scale 1, bias 0)
    y = GroupNorm(8).apply(GroupNorm(8).init(jax.random.key(1), x), x).reshape(4, 64, 8, 4)
    np.testing.assert_allclose(jnp.mean(y, axis=(1, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(jnp.var(y, axis=(1, 3)), 1.0, rtol=1e-3)


def test_fast_attention_over_query_blocks_is_plain_attention():
    """16 x 16 positions in 4 blocks of 64 queries: values and gradients of the plain softmax attention."""
    import functools

    from vdm.nets.ops import Ops, cpu_attention

    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    plain = AttnBlock()
    fast = AttnBlock(Ops("cpu", attention=functools.partial(cpu_attention, query_block=64)))
    params = jax.jit(plain.init)(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)
    np.testing.assert_allclose(jax.jit(fast.apply)(params, x), jax.jit(plain.apply)(params, x), rtol=1e-5, atol=1e-5)
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))  # noqa: E731
    g_fast = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(params, x)
    g_plain = jax.jit(jax.grad(loss(plain), argnums=(0, 1)))(params, x)
    # over the whole tree: the key bias's gradient is zero in exact arithmetic (softmax ignores a per-row shift)
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)))
    assert (num / sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(g_plain))) ** 0.5 < 1e-5


def test_named_mask_dropout_is_flax_dropout():
    """Same key, same mask, same output as flax.linen.Dropout (ResnetBlock's dropout, named for recomputation)."""
    import flax.linen as nn

    from vdm.nets.cpu.dropout import NamedMaskDropout as Dropout

    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
    rngs = {"dropout": jax.random.key(1)}
    ours = Dropout(0.3).apply({}, x, False, rngs=rngs)
    np.testing.assert_array_equal(ours, nn.Dropout(0.3).apply({}, x, False, rngs=rngs))
    assert 0.2 < float(jnp.mean(ours == 0)) < 0.4
    np.testing.assert_array_equal(Dropout(0.3).apply({}, x, True), x)
