"""Checkpoints of the official VDM code (google-research/vdm): read them and map their parameters onto ours.

The official training code saves its TrainState `{step, params, ema_params, opt_state}`
as flax msgpack bytes, `checkpoints-0/ckpt-N.flax`, next to a TF-style `checkpoint`
index file naming `ckpt-N`. Its `params` are `{score_model: ..., gamma: ...}`:

    score_model/{dense0, dense1, conv_in, conv_out, GroupNorm_0}     the same names here
    score_model/down.block_i, down.attn_i, up.block_i, up.attn_i     here `down`/`up` with block i on a
                                                                     leading axis (model.scan_blocks), or
                                                                     `down_i`/`up_i` (loop form); inside,
                                                                     the same names (conv1, GroupNorm_0, ...)
    score_model/mid.block_1, mid.attn_1, mid.block_2                 mid_block_1, mid_attn, mid_block_2
    gamma/{w, b}         learnable_scalar, gamma(t) = b + |w| t  ->  learned_linear: gamma_0 = b,
                                                                     delta = softplus^-1(|w|)
    gamma/{l1, l2, l3}   learnable_nnet                          ->  official_nnet, the same weights
    (no gamma)           fixed                                   ->  fixed_linear on [gamma_min, gamma_max]

Every official leaf is used exactly once and every vdm leaf is filled, or the
import stops naming the leftovers. The architecture keys that the shapes determine
(width, depth, attention, Fourier features, image channels, conditioning width,
schedule) are taken from the checkpoint; the official network's GroupNorms have 32
groups at every width (model.norm_groups = 32). The official optimizer state is not
imported: the workdir gets a fresh optimizer state at the official step.

`import_checkpoint` maps a checkpoint onto a config in memory; `vdm.training.official`
writes it as a run workdir (`python -m vdm.import_official`).
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np

from vdm.errors import CheckpointError, ConfigError

# What the official network computes whatever its shapes: these keys are set on every import.
OFFICIAL_FUNCTION = {
    "model.norm_groups": 32,  # flax's GroupNorm default, at every width
    "model.prediction": "eps",
    "model.input_skip": True,  # eps_hat = z + net(z), the official "base measure"
    "model.class_conditional": False,
}
# The official Base2FourierFeatures(start=6, stop=8, step=1), with no scale.
OFFICIAL_FOURIER = {"model.fourier_start": 6, "model.fourier_stop": 8, "model.fourier_step": 1,
                    "model.fourier_scale": 1.0}
_BLOCK = re.compile(r"^(down|up)\.(block|attn)_(\d+)$")
_LOOP_LAYER = re.compile(r"^(down|up)_(\d+)$")
_MID = {"mid.block_1": "mid_block_1", "mid.attn_1": "mid_attn", "mid.block_2": "mid_block_2"}
_MID_BACK = {v: k for k, v in _MID.items()}


class OfficialCheckpoint(NamedTuple):
    file: str  # the ckpt-N.flax read
    step: int
    params: dict  # {"score_model": ..., "gamma": ...}, nested dicts of numpy arrays
    ema_params: dict
    has_opt_state: bool


class ImportedRun(NamedTuple):
    config: object  # the ConfigDict of the run, validated
    model: object  # its VDM
    params: dict  # {"net", "schedule"}: the official `params`
    ema_params: dict  # the official `ema_params`
    checkpoint: OfficialCheckpoint
    from_checkpoint: dict  # {config key: value} taken from the checkpoint's shapes and the official function


# ----------------------------------------------------------------------------------------------- reading


def checkpoint_file(path: str) -> str:
    """The ckpt-N.flax a path names: the file itself, or the one a checkpoint directory's index names."""
    if os.path.isfile(path):
        if not path.endswith(".flax"):
            raise CheckpointError(f"{path} is not an official checkpoint file (ckpt-N.flax) or directory")
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"official checkpoint {path} not found: pass the checkpoints-0 directory or its "
                              "ckpt-N.flax file")
    index = os.path.join(path, "checkpoint")
    if os.path.isfile(index):
        with open(index) as f:
            match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', f.read(), flags=re.M)
        if not match:
            raise CheckpointError(f"{index} names no model_checkpoint_path: not an official checkpoint index")
        name = os.path.basename(match.group(1))
        file = os.path.join(path, name if name.endswith(".flax") else name + ".flax")
        if not os.path.isfile(file):
            raise CheckpointError(f"{index} names {name}, but {file} is missing: copy the whole checkpoint directory")
        return file
    numbered = [(int(m.group(1)), n) for n in os.listdir(path) if (m := re.fullmatch(r"ckpt-(\d+)\.flax", n))]
    if not numbered:
        raise CheckpointError(f"{path} has neither a 'checkpoint' index nor a ckpt-N.flax file: not an official "
                              "checkpoint directory")
    return os.path.join(path, max(numbered)[1])


def read_checkpoint(path: str) -> OfficialCheckpoint:
    """Reads an official checkpoint (directory or ckpt-N.flax) with flax's msgpack reader; no TensorFlow."""
    from flax import serialization

    file = checkpoint_file(path)
    with open(file, "rb") as f:
        data = f.read()
    try:
        state = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack's errors for truncated / foreign bytes have several types
        raise CheckpointError(f"cannot read {file} ({len(data):,} bytes) as flax msgpack: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'}; truncated or not a checkpoint? "
                              "copy it again") from None
    if not isinstance(state, dict) or not all(k in state for k in ("params", "ema_params")):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{file} holds {keys}, not the official TrainState (step, params, ema_params, opt_state)")
    params, ema = (_unwrap(state[k]) for k in ("params", "ema_params"))
    return OfficialCheckpoint(file, int(np.asarray(state.get("step", 0))), params, ema, bool(state.get("opt_state")))


def _unwrap(tree):
    """The official TrainState keeps variables["params"]; accept a tree still wrapped in {"params": ...}."""
    return tree["params"] if isinstance(tree, dict) and set(tree) == {"params"} else tree


def _flat(tree) -> dict:
    """{"a/b/c": leaf} of a nested dict."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
        else:
            out[prefix[:-1]] = node

    walk(tree, "")
    return out


def _unflat(flat: dict) -> dict:
    out = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


# ------------------------------------------------------------------------------------- architecture


def _shape(flat: dict, path: str, file: str) -> tuple:
    if path not in flat:
        raise CheckpointError(f"{file} has no {path}: not a checkpoint of the official VDM model")
    return tuple(np.shape(flat[path]))


def architecture(params: dict, file: str = "the checkpoint") -> dict:
    """{config key: value} that the official parameter shapes determine."""
    flat = _flat(params)
    conv_in = _shape(flat, "score_model/conv_in/kernel", file)
    conv_out = _shape(flat, "score_model/conv_out/kernel", file)
    dense0 = _shape(flat, "score_model/dense0/kernel", file)
    channels, image_channels, inputs = conv_in[-1], conv_out[-1], conv_in[-2]
    fourier_inputs = 2 * len(range(OFFICIAL_FOURIER["model.fourier_start"], OFFICIAL_FOURIER["model.fourier_stop"],
                                   OFFICIAL_FOURIER["model.fourier_step"]))
    if inputs == image_channels:
        fourier = False
    elif inputs == image_channels * (1 + fourier_inputs):
        fourier = True
    else:
        raise CheckpointError(f"{file}: conv_in takes {inputs} channels for {image_channels}-channel images, neither "
                              f"the image alone nor with the official Fourier features ({image_channels * (1 + fourier_inputs)})")
    blocks = {}
    for path in flat:
        m = _BLOCK.match(path.split("/")[1]) if path.startswith("score_model/") else None
        if m:
            blocks.setdefault((m.group(1), m.group(2)), set()).add(int(m.group(3)))
    num_blocks = len(blocks.get(("down", "block"), ()))
    if not num_blocks:
        raise CheckpointError(f"{file} has no score_model/down.block_0: not a checkpoint of the official VDM model")
    gamma = set(params.get("gamma", {}))
    schedules = {frozenset({"w", "b"}): "learned_linear", frozenset({"l1", "l2", "l3"}): "official_nnet",
                 frozenset(): "fixed_linear"}
    if frozenset(gamma) not in schedules:
        raise CheckpointError(f"{file}: gamma has parameters {sorted(gamma)}, none of the official schedules' "
                              "(learnable_scalar: w, b; learnable_nnet: l1, l2, l3; fixed: none)")
    out = {
        "model.channels": channels,
        "model.num_blocks": num_blocks,
        "model.attention_per_block": ("down", "attn") in blocks,
        "model.fourier_features": fourier,
        "model.cond_dim": dense0[0] - channels,
        "data.image_shape[-1]": image_channels,
        "schedule.name": schedules[frozenset(gamma)],
    }
    if out["model.cond_dim"] < 0:
        raise CheckpointError(f"{file}: dense0 takes {dense0[0]} inputs, fewer than the {channels} of the time "
                              "embedding: not the official network")
    if fourier:
        out.update(OFFICIAL_FOURIER)
    return out


def _get(config, key):
    if key == "data.image_shape[-1]":
        return tuple(config.data.image_shape)[-1]
    section, name = key.split(".")
    return config[section][name]


def _set(config, key, value):
    if key == "data.image_shape[-1]":
        config.data.image_shape = (*tuple(config.data.image_shape)[:-1], value)
    else:
        section, name = key.split(".")
        config[section][name] = value


def configure(config, params: dict, explicit=(), file: str = "the checkpoint") -> tuple:
    """(config with the checkpoint's architecture and the official function's keys, {key: value} set).

    explicit: the keys given as --config.KEY=VALUE; one of them that contradicts the
    checkpoint is a ConfigError naming both values. Values of the config file are replaced.
    """
    from vdm.config.validation import validate

    wanted = {**architecture(params, file), **OFFICIAL_FUNCTION}
    for key, value in wanted.items():
        given = _get(config, key)
        explicit_key = "data.image_shape" if key == "data.image_shape[-1]" else key
        if explicit_key in explicit and given != value:
            why = "the official network's" if key in OFFICIAL_FUNCTION else "its parameter shapes'"
            shown = f"{explicit_key}={tuple(config.data.image_shape)}" if key == "data.image_shape[-1]" else f"{key}={given!r}"
            raise ConfigError(f"--config.{shown} contradicts the official checkpoint {file}: {why} "
                              f"{key} is {value!r}; drop the override")
        _set(config, key, value)
    from vdm.data.augment import AUGMENTATIONS

    feeds = AUGMENTATIONS.lookup(config.data.augmentation) - 1
    if feeds and feeds != config.model.cond_dim:
        raise ConfigError(f"data.augmentation={config.data.augmentation!r} feeds {feeds} conditioning inputs (one per "
                          f"group element), the official network of {file} takes {config.model.cond_dim} (the official "
                          "cifar10_aug: one flag, 1 for an image flipped and/or rotated by 90 degrees); fine-tune it "
                          "with data.augmentation 'none' or 'flip'")
    validate(config)
    return config, wanted


# ------------------------------------------------------------------------------------------ mapping


def official_paths(path: str, leading: int | None) -> list:
    """The official parameter paths (under score_model/) a vdm network leaf is made of, in block order.

    leading: the leaf's leading axis length for the scanned stacks `down`/`up` (block i at index i).
    """
    head, _, rest = path.partition("/")
    if head in ("down", "up") and leading is not None:
        kind, _, inner = rest.partition("/")
        return [f"{head}.{kind}_{i}/{inner}" for i in range(leading)]
    m = _LOOP_LAYER.match(head)
    if m:
        kind, _, inner = rest.partition("/")
        return [f"{m.group(1)}.{kind}_{m.group(2)}/{inner}"]
    return [f"{_MID_BACK.get(head, head)}/{rest}"]


def _softplus_inverse(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return y + np.log(-np.expm1(-y))


def _schedule_leaves(name: str, gamma: dict) -> dict:
    """{vdm schedule path: value} and the official gamma/ paths they use, for one official gamma tree."""
    if name == "learned_linear":
        w, b = (np.asarray(gamma[k], np.float32).reshape(-1) for k in ("w", "b"))
        if w.shape != (1,) or b.shape != (1,):
            raise CheckpointError(f"gamma/w and gamma/b have shapes {w.shape}, {b.shape}; the official scalars are (1,)")
        if float(abs(w[0])) == 0.0:
            raise CheckpointError("gamma/w = 0: a constant schedule, which no vdm schedule represents")
        # gamma(t) = b + |w| t = gamma_0 + softplus(delta) t
        return {"endpoints/gamma_0": np.float32(b[0]), "endpoints/delta": np.float32(_softplus_inverse(abs(w[0])))}
    if name == "official_nnet":
        return {f"interior/{k}": np.asarray(v, np.float32) for k, v in _flat(gamma).items()}
    return {}


def map_params(official: dict, model, file: str = "the checkpoint") -> dict:
    """An official `params` tree -> vdm's {"net", "schedule"} for `model`, every leaf used once and every one filled."""
    import jax

    target = jax.eval_shape(model.init, jax.random.key(0))
    scan = model.net.scan_blocks
    source = _flat(official)
    used, missing, wrong = set(), [], []
    out = {}
    for path, spec in _flat(target["net"]).items():
        stacked = path.split("/")[0] in ("down", "up") and scan
        names = ["score_model/" + p for p in official_paths(path, spec.shape[0] if stacked else None)]
        absent = [n for n in names if n not in source]
        if absent:
            missing.extend(absent)
            continue
        parts = [np.asarray(source[n], np.float32) for n in names]
        value = np.stack(parts) if stacked else parts[0]
        if value.shape != spec.shape:
            wrong.append(f"{names[0]} {parts[0].shape} for net/{path} {spec.shape[1:] if stacked else spec.shape}")
            continue
        used.update(names)
        out["net/" + path] = value
    schedule = _schedule_leaves(model_schedule_name(model), official.get("gamma", {}))
    for path, spec in _flat(target["schedule"]).items():
        if path not in schedule:
            missing.append(f"schedule/{path}")
        elif np.shape(schedule[path]) != spec.shape:
            wrong.append(f"gamma/{path.split('/', 1)[1]} {np.shape(schedule[path])} for schedule/{path} {spec.shape}")
        else:
            out["schedule/" + path] = schedule[path]
    used.update("gamma/" + p for p in _flat(official.get("gamma", {})))
    leftover = sorted(set(source) - used)
    if missing or leftover or wrong:
        raise CheckpointError(f"{file} does not map onto vdm's network: {_listing(leftover, 'official parameters left over')}"
                              f"{_listing(missing, 'not in the checkpoint')}{_listing(wrong, 'of other shapes')}"
                              "a checkpoint of another official network than model_vdm.py?")
    net = _unflat({k[4:]: v for k, v in out.items() if k.startswith("net/")})
    sched = _unflat({k[9:]: v for k, v in out.items() if k.startswith("schedule/")})
    for group in ("endpoints", "interior"):  # the empty groups of the schedule's tree
        if group in target["schedule"] and group not in sched:
            sched[group] = {}
    return jax.tree.map(np.asarray, {"net": net, "schedule": sched})


def model_schedule_name(model) -> str:
    from vdm.core import schedules

    for name, cls in schedules.SCHEDULES.items():
        if type(model.schedule) is cls:
            return name
    return type(model.schedule).__name__


def _listing(items, what: str, limit: int = 4) -> str:
    if not items:
        return ""
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{what}: {', '.join(items[:limit])}{more}; "


def import_checkpoint(path: str, config, explicit=()) -> ImportedRun:
    """Reads an official checkpoint and maps it onto `config` (architecture keys from the checkpoint). Writes nothing."""
    from vdm.model import VDM

    ckpt = read_checkpoint(path)
    config, wanted = configure(config, ckpt.params, explicit, ckpt.file)
    model = VDM.from_config(config)
    params = map_params(ckpt.params, model, ckpt.file)
    ema = map_params(ckpt.ema_params, model, ckpt.file)
    return ImportedRun(config, model, params, ema, ckpt, wanted)


__all__ = ["OFFICIAL_FUNCTION", "ImportedRun", "OfficialCheckpoint", "architecture", "checkpoint_file", "configure",
           "import_checkpoint", "map_params", "official_paths", "read_checkpoint"]
