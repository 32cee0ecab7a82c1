"""Self-attention over blocks of queries: the same softmax(q k^T) v, with a block's scores kept in cache on a CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def blocked_attention(q, k, v, query_block: int):
    """softmax(q k^T) v for q [B, N, C] (pre-scaled), k, v [B, M, C], over blocks of queries under lax.map.

    softmax is taken as (E v) / rowsum(E), E = exp(s - max s): the normalisation after
    the value product, one pass fewer over the [queries, M] scores. Scores, softmax and
    the sums are float32 whatever the inputs' dtype (bfloat16 operands of both
    products accumulate in float32); the result has v's dtype.
    """

    def attend(q_block):
        s = jnp.einsum("bqc,bkc->bqk", q_block, k, preferred_element_type=jnp.float32)
        e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
        out = jnp.einsum("bqk,bkc->bqc", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return (out / jnp.sum(e, axis=-1)[..., None]).astype(v.dtype)

    b, n, c = q.shape
    blocks = -(-n // query_block)
    if blocks == 1 or n % blocks:
        return attend(q)
    out = jax.lax.map(attend, q.reshape(b, blocks, n // blocks, c).transpose(1, 0, 2, 3))
    return out.transpose(1, 0, 2, 3).reshape(b, n, c)
