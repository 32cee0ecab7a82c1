"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=4: 1-device vs 4-device loss, gradients, steps,
samples and ODE likelihoods.

Prints one JSON line of maximum relative differences (read by tests/test_distributed.py).
"""

import json
import os

import jax
import numpy as np

from vdm.config.validation import load_config_file
from vdm.data import pipeline as data
from vdm.errors import DataError
from vdm.training import distributed, evaluation, optim
from vdm.model import VDM
from vdm.training.generation import sample
from vdm.training.steps import create_train_state, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def max_rel(a, b):
    """||a - b|| / ||b|| over the whole tree as one vector.

    Per-leaf or elementwise ratios are meaningless here: a bias feeding a
    GroupNorm has an exactly zero gradient, so the reduction order's rounding
    noise is all Adam sees, and it turns that into +-lr steps of either sign.
    """
    diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    norm = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in jax.tree.leaves(b))
    return (diff / norm) ** 0.5


def main():
    assert jax.device_count() == 4, jax.devices()
    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    config.model.dropout = 0.1  # exercise sharded dropout randomness too
    model = VDM.from_config(config)
    mesh = distributed.data_mesh()
    ds = data.train_dataset(data.Source("digits", "train"), 16, 0)
    batches = [ds[i] for i in range(3)]
    params = model.init(jax.random.key(0))
    key = jax.random.key(7)

    grad_fn = jax.value_and_grad(lambda p, b, k: model.training_loss(p, b, k)[0])
    loss1, grads1 = jax.jit(grad_fn)(params, batches[0], key)
    repl = distributed.replicated(mesh)
    sharded = jax.jit(grad_fn, in_shardings=(repl, distributed.batch_sharding(mesh), repl), out_shardings=repl)
    loss4, grads4 = sharded(params, distributed.global_batch(batches[0], mesh), key)
    batch_devices = len(distributed.global_batch(batches[0], mesh)["images"].sharding.device_set)

    tx, lr = optim.make_optimizer(config.optim, 100)
    step1, step4 = make_train_step(model, tx, lr, 0.99), make_train_step(model, tx, lr, 0.99, mesh)
    s1 = create_train_state(model, tx, jax.random.key(0))
    s4 = jax.device_put(create_train_state(model, tx, jax.random.key(0)), repl)
    for b in batches:
        stacked = jax.tree.map(lambda x: x[None], b)
        s1, _ = step1(s1, stacked, key)
        s4, _ = step4(s4, distributed.global_batch(stacked, mesh, leading_axes=1), key)
    # sampling split over the devices: the same samples as on one device for the same key
    samples1 = sample(model, s1.ema_params, jax.random.key(5), 8, "pc", 3)
    samples4 = sample(model, jax.device_put(s1.ema_params, repl), jax.random.key(5), 8, "pc", 3, mesh=mesh)
    # the ODE likelihood split over the devices too: the same per-example bits/dim as on one device
    images = batches[0]["images"][:8]
    ode1 = evaluation.ode_bits_per_dim_fn(model)
    ode4 = evaluation.ode_bits_per_dim_fn(model, mesh=mesh)
    bpd1 = np.asarray(ode1(s1.ema_params, images, jax.random.key(6), "uniform"))
    bpd4 = ode4(jax.device_put(s1.ema_params, repl), distributed.global_batch({"x": images}, mesh)["x"],
                jax.random.key(6), "uniform")
    try:
        distributed.check_batch_size(18, mesh)
        error = None
    except DataError as e:
        error = str(e)
    print(json.dumps({
        "loss_rel": abs(float(loss1) - float(loss4)) / abs(float(loss1)),
        "grad_rel": max_rel(grads4, grads1),
        "params_rel": max_rel(s4.params, s1.params),
        "ema_rel": max_rel(s4.ema_params, s1.ema_params),
        "batch_devices": batch_devices,
        "params_sharding_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(s4.params)),
        "batch_error": error,
        "samples_equal": bool(np.array_equal(np.asarray(samples1), np.asarray(samples4))),
        "sample_devices": len(samples4.sharding.device_set),
        "ode_bpd_rel": float(np.max(np.abs(np.asarray(bpd4) - bpd1) / np.abs(bpd1))),
        "ode_devices": len(bpd4.sharding.device_set),
    }))


if __name__ == "__main__":
    main()
