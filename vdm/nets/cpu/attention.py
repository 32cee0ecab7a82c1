"""Self-attention over blocks of queries: the same softmax(q k^T) v, with a block's scores kept in cache on a CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def blocked_attention(q, k, v, query_block: int):
    """softmax(q k^T) v for q [B, N, C] (pre-scaled), k, v [B, M, C], over blocks of queries under lax.map."""

    def attend(q_block):
        s = jnp.einsum("bqc,bkc->bqk", q_block, k)
        e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
        return jnp.einsum("bqk,bkc->bqc", e, v) / jnp.sum(e, axis=-1)[..., None]

    b, n, c = q.shape
    blocks = -(-n // query_block)
    if blocks == 1 or n % blocks:
        return attend(q)
    out = jax.lax.map(attend, q.reshape(b, blocks, n // blocks, c).transpose(1, 0, 2, 3))
    return out.transpose(1, 0, 2, 3).reshape(b, n, c)
