"""How the network computes its convolutions, GroupNorms, attention and dropout: one small frozen object.

The U-Net's code describes the paper's architecture; an `Ops` says how its
heavy operations run. `model.impl` chooses one:

    reference   plain flax / JAX: nn.Conv, nn.GroupNorm, jax.nn.dot_product_attention,
                nn.Dropout with JAX's PRNG; no custom gradients, no loops. The
                default on GPU and TPU (`auto`).
    cpu         the CPU-tuned forms of `vdm.nets.cpu`: GroupNorm statistics per channel
                first, attention over blocks of queries, dropout masks named for
                recomputation, and a 3x3 convolution whose gradient stays fast inside
                `nn.scan` (when the blocks are scanned) or, in bfloat16, runs as
                float32-accumulating matmuls. The default on the CPU backend (`auto`).

Both compute the same function of the same parameters (float32 rounding apart;
tests/test_impls.py holds them to 1e-5 in bits/dim and gradients), so a
checkpoint trained with one loads and evaluates with the other.

`dtype` is the compute dtype of convolutions, dense layers and attention
("float32" or "bfloat16"); parameters, GroupNorm statistics, the residual stream
and the output stay float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.nets.cpu.attention import blocked_attention
from vdm.nets.cpu.conv import loop_friendly_conv
from vdm.nets.cpu.dropout import NamedMaskDropout
from vdm.nets.cpu.norm import GroupNorm as ChannelsFirstGroupNorm
from vdm.registry import Registry

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(C)) v for q [B, N, C], k, v [B, M, C]: `jax.nn.dot_product_attention`, one head."""
    return jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])[:, :, 0]


def cpu_attention(q, k, v, query_block: int = 256):
    """The same softmax attention over blocks of <= 256 queries (`vdm.nets.cpu.attention.blocked_attention`)."""
    return blocked_attention(q * (1.0 / math.sqrt(q.shape[-1])), k, v, query_block)


@dataclasses.dataclass(frozen=True)
class Ops:
    """The network's operations: what `model.impl` and `model.dtype` choose.

    name: 'reference' or 'cpu'. dtype: 'float32' | 'bfloat16', the compute dtype of
    convolutions, dense layers and attention. conv_fn: the `conv_general_dilated`
    nn.Conv calls (None: lax's). norm_cls: a GroupNorm module class taking num_groups.
    attention: (q [B, N, C], k, v [B, M, C]) -> [B, N, C]. dropout_cls: a Dropout
    module class taking rate, called as (x, deterministic).
    """

    name: str = "reference"
    dtype: str = "float32"
    conv_fn: Callable | None = None
    norm_cls: type = nn.GroupNorm
    attention: Callable = reference_attention
    dropout_cls: type = nn.Dropout

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    def conv3x3(self, features: int, **kwargs) -> nn.Conv:
        """A 3x3 'SAME' convolution computing in `dtype` with float32 parameters."""
        if self.conv_fn is not None:
            kwargs["conv_general_dilated"] = self.conv_fn
        return nn.Conv(features, (3, 3), dtype=self.compute_dtype, **kwargs)

    def dense(self, features: int, **kwargs) -> nn.Dense:
        return nn.Dense(features, dtype=self.compute_dtype, **kwargs)

    def group_norm(self, num_groups: int, **kwargs) -> nn.Module:
        """GroupNorm over `num_groups` groups, statistics and output in float32."""
        return self.norm_cls(num_groups=num_groups, **kwargs)

    def dropout(self, rate: float, **kwargs) -> nn.Module:
        return self.dropout_cls(rate, **kwargs)


def _reference(dtype: str, scanned: bool) -> Ops:
    del scanned
    return Ops("reference", dtype)


def _cpu(dtype: str, scanned: bool) -> Ops:
    if dtype == "bfloat16":
        from vdm.nets.cpu.matmul_conv import matmul_conv

        conv = matmul_conv  # bf16 operands, float32 accumulation: the CPU's bf16 matmul units
    else:
        conv = loop_friendly_conv if scanned else None  # XLA:CPU's own conv gradient is slow inside loops only
    return Ops("cpu", dtype, conv, ChannelsFirstGroupNorm, cpu_attention, NamedMaskDropout)


# model.impl: name -> fn(dtype, scanned) -> Ops. 'auto' (resolve_impl) picks one by the backend.
IMPLS = Registry("network implementation", {"reference": _reference, "cpu": _cpu})
IMPL_CHOICES = ("auto", *IMPLS)


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """'auto' -> 'cpu' on the CPU backend, 'reference' on any other (GPU, TPU); other names unchanged."""
    if impl != "auto":
        IMPLS.lookup(impl)
        return impl
    return "cpu" if (backend or jax.default_backend()) == "cpu" else "reference"


def make_ops(impl: str = "auto", dtype: str = "float32", scanned: bool = False, backend: str | None = None) -> Ops:
    """The `Ops` of `model.impl` (resolved for `backend`, default JAX's), `model.dtype`, and scanned blocks or not."""
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype = {dtype!r}; expected one of {list(DTYPES)}")
    return IMPLS.lookup(resolve_impl(impl, backend))(dtype, scanned)
