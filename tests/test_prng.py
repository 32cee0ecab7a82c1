"""vdm.nets.cpu.prng: threefry with unrolled rounds gives JAX's bits exactly, so dropout masks do not change."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.nets.cpu.prng import UNROLLED_THREEFRY, unrolled_threefry_key


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 2), (64, 8, 8, 64)])
def test_unrolled_threefry_draws_jax_bits_uniforms_and_bernoullis(shape):
    key = jax.random.key(11)
    fast = unrolled_threefry_key(key)
    assert jax.random.key_impl(fast) == jax.random.key_impl(jax.random.wrap_key_data(jax.random.key_data(key),
                                                                                    impl=UNROLLED_THREEFRY))
    for dtype in (jnp.uint8, jnp.uint16, jnp.uint32):
        np.testing.assert_array_equal(jax.random.bits(fast, shape, dtype), jax.random.bits(key, shape, dtype))
    np.testing.assert_array_equal(jax.random.uniform(fast, shape), jax.random.uniform(key, shape))
    np.testing.assert_array_equal(jax.jit(lambda k: jax.random.bernoulli(unrolled_threefry_key(k), 0.9, shape))(key),
                                  jax.random.bernoulli(key, 0.9, shape))


def test_split_and_fold_in_derive_the_same_keys():
    key = jax.random.key(3)
    fast = unrolled_threefry_key(key)
    np.testing.assert_array_equal(jax.random.key_data(jax.random.split(fast, 4)),
                                  jax.random.key_data(jax.random.split(key, 4)))
    np.testing.assert_array_equal(jax.random.key_data(jax.random.fold_in(fast, 17)),
                                  jax.random.key_data(jax.random.fold_in(key, 17)))
    child = jax.random.fold_in(jax.random.split(fast)[1], 5)  # a derived key keeps the fast bits
    np.testing.assert_array_equal(jax.random.bits(child, (9,)),
                                  jax.random.bits(jax.random.fold_in(jax.random.split(key)[1], 5), (9,)))


def test_other_key_kinds_pass_through_unchanged():
    rbg = jax.random.key(0, impl="rbg")
    assert unrolled_threefry_key(rbg) is rbg
