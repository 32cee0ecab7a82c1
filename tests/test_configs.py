"""Every shipped config starts: each configs/*.py file, each of its VARIANTS, each point of its get_sweep().

A config is loaded and validated, its dataset spec resolved and checked
against it, and its model, optimizer, train state, train step and eval step
traced with `jax.eval_shape` on abstract batches of its shapes. Nothing is
compiled or run, so the paper-size configs take seconds; a wrong dataset name,
shape, conditioning input or key fails here instead of at the start of a run.
New config files are covered by the glob.
"""

import glob
import json
import os

import jax
import jax.numpy as jnp
import pytest

from vdm.core.elbo_estimator import ElboEstimator
from vdm.config.validation import ConfigError, apply_overrides, load_config_file, load_config_module, validate
from vdm.data import datasets, pipeline as data
from vdm.model import VDM
from vdm.training.optim import make_optimizer
from vdm.training.steps import create_train_state, make_eval_step, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _cases():
    """(file, variant) for every config file and every entry of its VARIANTS."""
    cases = []
    for path in CONFIG_FILES:
        variants = getattr(load_config_module(path), "VARIANTS", None)
        name = os.path.relpath(path, ROOT)
        if variants is None:  # fails in the test, naming the file
            cases.append(pytest.param(path, None, id=f"{name}:VARIANTS-missing"))
            continue
        cases += [pytest.param(path, v, id=f"{name}:{v or 'default'}") for v in variants]
    return cases


def _batch_shapes(config) -> dict:
    """Abstract train batches as vdm.data.pipeline.TrainIterator delivers them: leaves [K, B, ...]."""
    k, b = config.training.steps_per_call, config.training.batch_size
    batches = {"images": jax.ShapeDtypeStruct((k, b, *config.data.image_shape), jnp.uint8),
               "labels": jax.ShapeDtypeStruct((k, b), jnp.int32)}
    group = data.AUGMENTATIONS[config.data.augmentation]
    if group > 1:
        batches["cond"] = jax.ShapeDtypeStruct((k, b, group - 1), jnp.float32)
    return batches


def _trace(config) -> None:
    """Raises if the config does not describe its dataset, or its model / optimizer / steps do not trace."""
    validate(config)
    spec = datasets.get_spec(config.data.name)
    data.check_config(config)  # image shape, V, labels for class conditioning, cond_dim for augmentation
    assert config.data.num_classes == spec.num_classes, (config.data.num_classes, spec)

    model = VDM.from_config(config)
    tx, lr = make_optimizer(config.optim, config.training.num_steps)
    key = jax.random.key(0)
    state = jax.eval_shape(lambda k: create_train_state(model, tx, k), key)
    train_step = make_train_step(model, tx, lr, config.optim.ema_decay, donate=config.training.donate_state)
    new_state, metrics = jax.eval_shape(train_step, state, _batch_shapes(config), key)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert all(a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)))
    assert metrics["loss"].shape == (config.training.steps_per_call,)

    b = config.eval.batch_size
    eval_batch = {"images": jax.ShapeDtypeStruct((b, *config.data.image_shape), jnp.uint8),
                  "labels": jax.ShapeDtypeStruct((b,), jnp.int32), "index": jax.ShapeDtypeStruct((b,), jnp.int32)}
    estimator = ElboEstimator.from_config(config.eval)  # the config's, as the run's evaluation uses
    terms = jax.eval_shape(make_eval_step(model, estimator=estimator), state.ema_params, eval_batch, key)
    assert terms["bpd"].shape == (b,)


_TRACED = set()  # configs already traced in this process, the seed left out (it changes no shape)


def _trace_once(config) -> None:
    key = config.copy_and_resolve_references()
    key.training.seed = 0
    text = json.dumps(key.to_dict(), sort_keys=True, default=str)
    if text not in _TRACED:
        _trace(config)
        _TRACED.add(text)


@pytest.mark.parametrize("path,variant", _cases())
def test_config_starts(path, variant):
    module = load_config_module(path)
    assert hasattr(module, "VARIANTS"), f"{path} declares no VARIANTS (the values its get_config accepts)"
    config = load_config_file(path, variant)
    validate(config)
    _trace_once(config)
    for point in module.get_sweep(variant) if hasattr(module, "get_sweep") else ():
        validate(apply_overrides(config.copy_and_resolve_references(), point))


@pytest.mark.slow  # ~45 model traces (3 s each on 2 cores); each point's keys are validated in the fast test above
@pytest.mark.parametrize("path,variant", [c for c in _cases() if hasattr(load_config_module(c.values[0]), "get_sweep")])
def test_every_sweep_point_starts(path, variant):
    config = load_config_file(path, variant)
    for point in load_config_module(path).get_sweep(variant):
        _trace_once(apply_overrides(config.copy_and_resolve_references(), point))


def test_unknown_dataset_name_is_rejected_naming_the_registry():
    config = load_config_file(os.path.join(ROOT, "configs", "digits.py"))
    config.data.name = "downsampled_imagenet/32x32"
    with pytest.raises(ConfigError) as info:
        validate(config)
    message = str(info.value)
    assert "'data.name'" in message and all(name in message for name in datasets.DATASETS), message
