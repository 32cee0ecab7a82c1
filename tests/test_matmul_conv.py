"""vdm.nets.cpu.matmul_conv: the bf16-matmul convolution computes lax's convolution of the bf16-rounded operands.

The reference is `lax.conv_general_dilated` in float32 on operands rounded to
bfloat16 first. A product of two bfloat16 numbers is exact in float32, so with
float32 accumulation the forward value differs from the reference only by
summation order: asserted below 1e-5 relative (max-abs difference over max-abs
reference). The gradients also round the incoming cotangent to bfloat16
(relative step 2**-8): with a bf16-exact cotangent they meet the same 1e-5
bound, with a general float32 one they are asserted below 1e-2.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vdm.nets.cpu.matmul_conv import matmul_conv

DIMS = ("NHWC", "HWIO", "NHWC")
BF16, F32 = jnp.bfloat16, jnp.float32


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _round(a):
    return jnp.asarray(a.astype(BF16), F32)


def _ref(padding):
    return lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DIMS)


def _ours(padding):
    return lambda x, w: matmul_conv(x, w, (1, 1), padding, dimension_numbers=DIMS)


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((3, 3), "VALID"), ((3, 3), ((0, 2), (1, 0))),
                                            ((1, 1), "SAME"), ((2, 3), ((1, 0), (1, 1)))])
def test_values_and_gradients_match_lax_on_rounded_operands(kernel, padding):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = _round(jax.random.normal(kx, (3, 7, 6, 5)))
    w = _round(jax.random.normal(kw, (*kernel, 5, 4)))

    @jax.jit
    def run(x, w):
        (y_ref, vjp_ref), (y, vjp) = jax.vjp(_ref(padding), x, w), jax.vjp(_ours(padding), x, w)
        g = jax.random.normal(kg, y.shape)
        return y, y_ref, [(vjp(c), vjp_ref(c)) for c in (_round(g), g)]

    y, y_ref, grads = run(x, w)
    assert y.shape == y_ref.shape and y.dtype == F32
    assert _rel(y, y_ref) < 1e-5
    for (ours, ref), tol in zip(grads, [1e-5, 1e-2]):
        for a, b in zip(ours, ref):
            assert a.dtype == F32 and a.shape == b.shape
            assert _rel(a, b) < tol


def test_bf16_operands_give_float32_output_and_bf16_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 6)).astype(BF16)
    w = jax.random.normal(jax.random.key(2), (3, 3, 6, 7)).astype(BF16)

    @jax.jit
    def run(x, w):
        y, vjp = jax.vjp(_ours("SAME"), x, w)
        y_ref, vjp_ref = jax.vjp(_ref("SAME"), jnp.asarray(x, F32), jnp.asarray(w, F32))
        g = _round(jax.random.normal(jax.random.key(3), y.shape))
        return y, y_ref, vjp(g), vjp_ref(g)

    y, y_ref, grads, grads_ref = run(x, w)
    assert y.dtype == F32 and _rel(y, y_ref) < 1e-5
    for ours, ref in zip(grads, grads_ref):
        assert ours.dtype == BF16
        assert _rel(ours, ref) < 1e-2  # the float32 gradient rounded to bf16 on return


def test_inside_scan_under_jit():
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 6))
    ws = 0.3 * jax.random.normal(jax.random.key(5), (3, 3, 3, 6, 6))
    g = jax.random.normal(jax.random.key(6), (2, 8, 8, 6))

    def layer(conv, round_inputs):
        def f(y, w):
            if round_inputs:
                y, w = _round(y), _round(w)
            return conv(y, w), None
        return f

    def loss_scan(conv, round_inputs):
        return lambda x, ws: jnp.sum(lax.scan(layer(conv, round_inputs), x, ws)[0] * g)

    def loss_unrolled(x, ws):
        for w in ws:
            x = matmul_conv(x, w, (1, 1), "SAME", dimension_numbers=DIMS)
        return jnp.sum(x * g)

    v, grads = jax.jit(jax.value_and_grad(loss_scan(_ours("SAME"), False), (0, 1)))(x, ws)
    v_un, grads_un = jax.jit(jax.value_and_grad(loss_unrolled, (0, 1)))(x, ws)
    v_ref, grads_ref = jax.jit(jax.value_and_grad(loss_scan(_ref("SAME"), True), (0, 1)))(x, ws)
    assert abs(float(v - v_un)) <= 1e-5 * abs(float(v_un)) and abs(float(v - v_ref)) <= 1e-5 * abs(float(v_ref))
    for ours, unrolled, ref in zip(grads, grads_un, grads_ref):
        assert ours.dtype == F32
        assert _rel(ours, unrolled) < 1e-5
        assert _rel(ours, ref) < 1e-2


@pytest.mark.parametrize("kwargs", [dict(window_strides=(2, 2)), dict(window_strides=(1, 1), rhs_dilation=(2, 2)),
                                    dict(window_strides=(1, 1), feature_group_count=2)])
def test_unsupported_cases_fall_back_to_lax_exactly(kwargs):
    x = jax.random.normal(jax.random.key(7), (2, 9, 9, 4))
    w = jax.random.normal(jax.random.key(8), (3, 3, 4 // kwargs.get("feature_group_count", 1), 6))
    ours = lambda x, w: matmul_conv(x, w, padding="SAME", dimension_numbers=DIMS, **kwargs)  # noqa: E731
    ref = lambda x, w: lax.conv_general_dilated(x, w, padding="SAME", dimension_numbers=DIMS, **kwargs)  # noqa: E731

    @jax.jit
    def run(x, w):
        (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x, w), jax.vjp(ref, x, w)
        return y, y_ref, vjp(jnp.ones_like(y)), vjp_ref(jnp.ones_like(y))

    y, y_ref, grads, grads_ref = run(x, w)
    assert y.dtype == F32 and bool(jnp.all(y == y_ref))
    for a, b in zip(grads, grads_ref):
        assert bool(jnp.all(a == b))


@pytest.mark.parametrize("dtype", [BF16, F32])
def test_flax_conv_same_parameters_and_close_outputs(dtype):
    x = jax.random.normal(jax.random.key(9), (2, 8, 8, 5))
    plain = nn.Conv(6, (3, 3))
    ours = nn.Conv(6, (3, 3), dtype=dtype, conv_general_dilated=matmul_conv)
    params = plain.init(jax.random.key(10), x)
    params_ours = ours.init(jax.random.key(10), x)
    assert jax.tree.structure(params) == jax.tree.structure(params_ours)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_ours)):
        assert a.dtype == b.dtype == F32 and bool(jnp.all(a == b))
    params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

    @jax.jit
    def run(params, x):
        return [(m.apply(params, x), jax.grad(loss(m), (0, 1))(params, x)) for m in (plain, ours)]

    (y, grads), (y_ours, grads_ours) = run(params, x)
    assert y_ours.dtype == F32 and _rel(y_ours, y) < 1e-2
    for a, b in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads)):
        assert a.dtype == F32 and _rel(a, b) < 2e-2
