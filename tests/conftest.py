"""Shared test setup: float32 JAX on CPU with the persistent compilation cache."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "tensorflow_datasets"))

import jax  # noqa: E402

_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
if _cache:
    jax.config.update("jax_compilation_cache_dir", _cache)
