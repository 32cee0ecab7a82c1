"""JAX's threefry random bits with the 20 rounds unrolled: the same bits, several times faster on a CPU.

On CPU, JAX lowers threefry2x32 with its rounds in a loop (small programs, slow
kernels: one pass over memory per round). Dropout draws one number per
activation, so at the paper's size those loops take ~5% of a training step.
`unrolled_threefry_key(key)` rewraps a threefry key as `UNROLLED_THREEFRY`, a
PRNG implementation (`jax.extend.random.define_prng_impl`) whose random_bits
computes threefry2x32 (Salmon et al. 2011; the key schedule and rotations of
JAX's implementation) on the same counters, written out as array ops that XLA
fuses into one kernel; split and fold_in are JAX's own. So
`jax.random.bernoulli(unrolled_threefry_key(k), p, shape)` returns exactly
`jax.random.bernoulli(k, p, shape)` (tests/test_prng.py checks the bits).
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jax_random_ext
import jax.numpy as jnp

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # threefry's key-schedule constant


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 with 20 rounds: uint32 key words k1, k2 (scalars), counters x1, x2 (same shape) -> 2 words."""
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(_PARITY))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << jnp.uint32(r)) | (x2 >> jnp.uint32(32 - r)))
        x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x1, x2


def _threefry_key(key_data):
    return jax.random.wrap_key_data(key_data, impl="threefry2x32")


def _random_bits(key_data, bit_width: int, shape):
    """JAX's partitionable threefry random bits: counters (0, i) for the flat index i < 2^32."""
    size = math.prod(shape)
    if size >= 2**32:
        return jax.random.bits(_threefry_key(key_data), shape, jnp.dtype(f"uint{bit_width}"))
    counts = jnp.arange(size, dtype=jnp.uint32).reshape(shape)
    bits1, bits2 = threefry2x32(key_data[0], key_data[1], jnp.zeros(shape, jnp.uint32), counts)
    if bit_width == 64:
        return (bits1.astype(jnp.uint64) << jnp.uint64(32)) | bits2.astype(jnp.uint64)
    return (bits1 ^ bits2).astype(jnp.dtype(f"uint{bit_width}"))


UNROLLED_THREEFRY = jax_random_ext.define_prng_impl(
    key_shape=(2,),
    seed=lambda seed: jax.random.key_data(jax.random.key(seed, impl="threefry2x32")),
    split=lambda key_data, shape: jax.random.key_data(jax.random.split(_threefry_key(key_data), shape)),
    random_bits=_random_bits,
    fold_in=lambda key_data, data: jax.random.key_data(jax.random.fold_in(_threefry_key(key_data), data)),
    name="threefry2x32_unrolled",
    tag="tfu",
)


def unrolled_threefry_key(key):
    """The same key with `UNROLLED_THREEFRY`'s faster random_bits; other keys (rbg, ...) are returned unchanged.

    Also unchanged when jax_threefry_partitionable is off: JAX then counts differently.
    """
    if not jax.config.jax_threefry_partitionable or str(jax.random.key_impl(key)) != "threefry2x32":
        return key
    return jax.random.wrap_key_data(jax.random.key_data(key), impl=UNROLLED_THREEFRY)
