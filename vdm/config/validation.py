"""Config loading and validation: a wrong key or value stops the run with one line naming it.

Every config derives from the schema `vdm.config.schema.base_config()`, which
defines every key and its type; an override may change values, never add keys
or change a type. Config files are plain Python files loaded by path
(`load_config_file`); one that derives from a sibling file loads it by path
too, relative to its own `__file__`, so no import path is needed. A key that
moved is mapped, and one that was removed stops naming what replaced it
(`vdm.config.migrations`).
"""

from __future__ import annotations

import importlib.util
import os
import types

import ml_collections

from vdm.config.migrations import MOVED_KEYS, REMOVED_KEYS, migrate, moved_key_error, removed_key_error
from vdm.config.schema import base_config
from vdm.errors import ConfigError  # noqa: F401  (re-exported)

SCHEMA = "vdm/config/schema.py"  # where error messages send the reader

# Keys that switch between a few ways of training; the keys that name one of a list of things are in `registries`.
_CHOICES = {
    "optim.decay": ("constant", "cosine"),
    "training.on_nonfinite": ("stop", "skip"),
    "schedule.interior_objective": ("elbo", "variance"),
    "model.dtype": ("float32", "bfloat16"),
    "eval.matmul_precision": ("highest", "high", "default"),
}


def registries() -> dict:
    """{config key: the registry (`vdm.registry`) whose keys it may name}, read here and by the code alike.

    Imported when a config is validated, not with this module: most of them import jax.
    """
    from vdm.core import diffusion, elbo_estimator, schedules, weightings
    from vdm.data import augment, datasets
    from vdm.nets import latent, ops
    from vdm.sampling import SAMPLERS

    return {
        "data.name": datasets.DATASETS,
        "data.augmentation": augment.AUGMENTATIONS,
        "model.prediction": diffusion.PREDICTIONS,
        "schedule.name": schedules.SCHEDULES,
        "schedule.latent": latent.LATENTS,
        "loss.weighting": weightings.WEIGHTINGS,
        "eval.sampler": SAMPLERS,
        "eval.time_density": elbo_estimator.TIME_DENSITIES,
        "model.impl": ops.IMPL_CHOICES,  # 'auto' and the keys of ops.IMPLS
    }
_POSITIVE = (
    "data.vocab_size", "model.channels", "model.num_blocks", "training.num_steps", "training.batch_size",
    "training.steps_per_call", "training.log_every", "training.eval_every", "optim.learning_rate",
    "optim.accumulate_steps", "eval.batch_size", "eval.num_repeats", "eval.points_per_example", "eval.sampler_steps", "schedule.width",
    "schedule.latent_dim", "schedule.latent_k",
    "model.fourier_step", "model.fourier_scale", "optim.schedule_lr_scale", "checkpoint.every_steps", "checkpoint.max_to_keep",
)
_NON_NEGATIVE = (
    "loss.num_steps", "loss.decoder_window", "optim.warmup_steps", "optim.weight_decay", "optim.grad_clip", "training.max_seconds",
    "model.cond_dim", "model.norm_groups", "data.num_classes", "eval.num_samples", "checkpoint.every_minutes",
)
_FRACTIONS = ("model.dropout", "model.label_dropout", "optim.b1", "optim.b2", "optim.ema_decay")


def weighting_trains_schedule_endpoints(weighting: str) -> bool:
    """Whether the training loss of loss.weighting `weighting` may move a learned schedule's endpoints: only under
    w = 1 ('elbo'), where the prior and reconstruction terms balance gamma_0 and gamma_1 (`validate` refuses other
    weightings with learned endpoints, except the variance objective, which then pins them)."""
    return weighting == "elbo"


def sampler_schedule_problem(schedule: str, sampler: str) -> str | None:
    """Why sampler `sampler` cannot sample a model of schedule `schedule` ('<sampler> ... : use one of ...');
    None if it can. A sampler whose points are placed in one log-SNR needs one gamma per example."""
    tables = registries()
    if not (getattr(tables["schedule.name"][schedule], "per_dimension", False)
            and tables["eval.sampler"][sampler].log_snr_grid):
        return None
    usable = ", ".join(n for n, s in tables["eval.sampler"].items() if not s.log_snr_grid)
    return (f"{sampler!r} places its points in one log-SNR, which schedule {schedule!r} (one gamma per dimension) "
            f"does not have: use one of {usable}")


def flatten(cfg, prefix="") -> dict:
    """{"a.b": value} for every leaf of a ConfigDict."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _where_in(path: str, error: BaseException) -> str:
    """'path:line' of the deepest frame of `error`'s traceback that is in the file `path` ('path' if none is)."""
    line = None
    tb = error.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{path}:{line}" if line else path


def load_config_module(path: str) -> types.ModuleType:
    """Executes a config file as a fresh module (not added to sys.modules) and returns it.

    ConfigError (one line, naming the file and line) if the file is missing, is not a Python file, has a syntax
    error, or raises while it runs.
    """
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    path = os.path.abspath(path)
    if os.path.isdir(path) or not path.endswith(".py"):
        raise ConfigError(f"config file {path} is not a Python file (--config=configs/NAME.py[:variant])")
    spec = importlib.util.spec_from_file_location(f"_vdm_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        if e.lineno is None:  # e.g. null bytes: not source code at all
            raise ConfigError(f"config file {path} is not Python source ({e.msg})") from None
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except (ValueError, UnicodeDecodeError) as e:  # null bytes, an undecodable file: not Python source
        raise ConfigError(f"config file {path} is not Python source ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001  (an import or a name error in the file: name where, one line)
        raise ConfigError(f"{_where_in(path, e)}: {type(e).__name__} while loading the config: {e}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path} defines no get_config(); every config file returns its "
                          f"ml_collections.ConfigDict from get_config(arg=None)")
    return module


def load_config_file(path: str, arg: str | None = None):
    """Loads a config file and returns its get_config(arg) (get_config() when arg is None).

    ConfigError naming the accepted variants if the file lists VARIANTS and `arg` is not one of them, and naming
    the file and line if get_config raises.
    """
    module = load_config_module(path)
    path = os.path.abspath(path)
    variants = getattr(module, "VARIANTS", None)
    if variants is not None and arg not in variants and not (arg == "" and None in variants):
        names = ", ".join(repr(v) for v in variants if v is not None) or "none"
        raise ConfigError(f"{path}: unknown variant {arg!r}; its variants: {names} (or no ':variant')")
    try:
        config = module.get_config(arg) if arg is not None else module.get_config()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{_where_in(path, e)}: get_config({'' if arg is None else repr(arg)}) raised "
                          f"{type(e).__name__}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict")
    return migrate(config)


def _same_type(ref, value):
    if isinstance(ref, bool) or isinstance(value, bool):
        return isinstance(ref, bool) and isinstance(value, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float))
    if isinstance(ref, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(value) == len(ref)
    return isinstance(value, type(ref))


def validate(config) -> None:
    """Raises ConfigError with a one-line message naming the first bad key."""
    ref, flat = flatten(base_config()), flatten(config)
    for key, value in flat.items():
        if key in REMOVED_KEYS:
            raise removed_key_error(key)
        if key in MOVED_KEYS:
            raise moved_key_error(key)
        if key not in ref:
            raise ConfigError(f"unknown config key '{key}' (not in {SCHEMA})")
        if not _same_type(ref[key], value):
            raise ConfigError(
                f"config key '{key}' must be {type(ref[key]).__name__}, got {type(value).__name__} {value!r}"
            )
    for key in ref:
        if key not in flat:
            raise ConfigError(f"config key '{key}' is missing (every config derives from {SCHEMA})")
    tables = registries()
    for key, names in {**_CHOICES, **tables}.items():
        if flat[key] not in names:
            raise ConfigError(f"config key '{key}' = {flat[key]!r}; expected one of {list(names)}")
    for key in _POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {flat[key]!r}")
    for key in _NON_NEGATIVE:
        if not flat[key] >= 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {flat[key]!r}")
    for key in _FRACTIONS:
        if not 0 <= flat[key] < 1:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {flat[key]!r}")
    if not flat["schedule.gamma_min"] < flat["schedule.gamma_max"]:
        raise ConfigError(
            f"config key 'schedule.gamma_min' = {flat['schedule.gamma_min']} must be < "
            f"'schedule.gamma_max' = {flat['schedule.gamma_max']}"
        )
    if flat["data.vocab_size"] < 2:
        raise ConfigError(f"config key 'data.vocab_size' must be >= 2, got {flat['data.vocab_size']}")
    shape = flat["data.image_shape"]
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ConfigError(f"config key 'data.image_shape' must be (H, W, C) positive ints, got {shape!r}")
    if flat["model.norm_groups"] and flat["model.channels"] % flat["model.norm_groups"]:
        raise ConfigError(f"config key 'model.norm_groups' = {flat['model.norm_groups']} must divide "
                          f"'model.channels' = {flat['model.channels']} (or be 0: gcd(32, channels / 4))")
    if flat["model.class_conditional"] and flat["data.num_classes"] < 1:
        raise ConfigError("config key 'model.class_conditional' needs 'data.num_classes' >= 1")
    if flat["model.fourier_features"] and not flat["model.fourier_start"] < flat["model.fourier_stop"]:
        raise ConfigError("config key 'model.fourier_start' must be < 'model.fourier_stop'")
    weighting = tables["loss.weighting"][flat["loss.weighting"]]
    learned = getattr(tables["schedule.name"][flat["schedule.name"]], "learned", False)
    adaptive = flat["schedule.name"] == "monotone_net" and flat["schedule.interior_objective"] == "variance"
    if not weighting_trains_schedule_endpoints(flat["loss.weighting"]) and learned and not adaptive:
        # Only the ELBO's gradient trains the endpoints (and, with interior_objective = 'elbo', the shape) sensibly:
        # L_w of another weighting has no prior / reconstruction terms to balance gamma_0, gamma_1.
        raise ConfigError(f"config key 'loss.weighting' = {flat['loss.weighting']!r} cannot train a learned "
                          "'schedule.name' (only 'elbo' trains its endpoints); use a fixed schedule, or "
                          "'monotone_net' with 'schedule.interior_objective' = 'variance' (endpoints pinned, "
                          "the interior an adaptive importance sampler of lambda)")
    if flat["schedule.latent"] != "none" and flat["schedule.name"] != "mulan":
        raise ConfigError(f"config key 'schedule.latent' = {flat['schedule.latent']!r} conditions MuLAN's schedule on "
                          f"each image: it needs 'schedule.name' = 'mulan', got {flat['schedule.name']!r}")
    if flat["schedule.latent"] == "topk" and not flat["schedule.latent_k"] < flat["schedule.latent_dim"]:
        raise ConfigError(f"config key 'schedule.latent_k' = {flat['schedule.latent_k']} must be below "
                          f"'schedule.latent_dim' = {flat['schedule.latent_dim']} (k of its slots are on)")
    if getattr(tables["schedule.name"][flat["schedule.name"]], "per_dimension", False):
        if flat["eval.time_density"] != "schedule":
            raise ConfigError(f"config key 'schedule.name' = {flat['schedule.name']!r} has one gamma per dimension: "
                              "set 'eval.time_density' = 'schedule' (one log-SNR for all dimensions does not follow "
                              "its path)")
        problem = sampler_schedule_problem(flat["schedule.name"], flat["eval.sampler"])
        if problem:
            raise ConfigError(f"config key 'eval.sampler' = {problem}")
    if flat["loss.num_steps"] and flat["loss.weighting"] not in ("elbo", "eps_mse"):
        raise ConfigError(f"config key 'loss.weighting' = {flat['loss.weighting']!r} is continuous-time only "
                          "('loss.num_steps' = 0); in discrete time only 'elbo' and 'eps_mse'")
    if flat["schedule.interior_objective"] == "variance":
        if flat["schedule.name"] != "monotone_net":
            raise ConfigError("config key 'schedule.interior_objective' = 'variance' needs 'schedule.name' = "
                              f"'monotone_net' (the only schedule with an interior shape), got {flat['schedule.name']!r}")
        if weighting.w is None or flat["loss.num_steps"] != 0:
            table = tables["loss.weighting"]
            of_lambda = ", ".join(n for n in table if table[n].w is not None)
            raise ConfigError("config key 'schedule.interior_objective' = 'variance' needs a continuous-time loss "
                              f"('loss.num_steps' = 0) whose weighting is a function of lambda alone ({of_lambda}), "
                              f"got {flat['loss.weighting']!r}: only there is E[L] free of the interior")
    for key in ("training.log_every", "training.eval_every", "checkpoint.every_steps", "training.num_steps"):
        if flat[key] % flat["training.steps_per_call"]:
            raise ConfigError(f"config key '{key}' = {flat[key]} must be a multiple of 'training.steps_per_call' = "
                              f"{flat['training.steps_per_call']} (checkpoints fall on call boundaries)")


def parse_override(config, dotted_key: str, text: str):
    """Applies --config.a.b=text to a config, parsing text to the key's type; ConfigError if invalid."""
    import ast

    node = config
    parts = dotted_key.split(".")
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
            raise ConfigError(f"unknown config key '{dotted_key}' (not in {SCHEMA})")
        node = node[p]
    if dotted_key in REMOVED_KEYS:
        raise removed_key_error(dotted_key)
    if dotted_key in MOVED_KEYS:  # --config.loss.objective=simple sets loss.weighting = 'eps_mse'
        new, mapping = MOVED_KEYS[dotted_key]
        if text not in mapping:
            raise moved_key_error(dotted_key, text)
        return parse_override(config, new, mapping[text])
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key '{dotted_key}' (not in {SCHEMA})")
    ref = node[parts[-1]]
    if isinstance(ref, str):
        value = text
    else:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if isinstance(ref, bool) and text.lower() in ("true", "false"):
                value = text.lower() == "true"
            else:
                raise ConfigError(f"config key '{dotted_key}': cannot parse {text!r} as {type(ref).__name__}") from None
    if isinstance(ref, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not _same_type(ref, value):
        raise ConfigError(f"config key '{dotted_key}' must be {type(ref).__name__}, got {type(value).__name__} {value!r}")
    node[parts[-1]] = tuple(value) if isinstance(ref, tuple) else value
    return config


def apply_overrides(config, overrides: dict):
    """Applies {"a.b": value} overrides (values typed or as command-line text), then validates."""
    for key, value in overrides.items():
        parse_override(config, key, value if isinstance(value, str) else repr(value))
    validate(config)
    return config
