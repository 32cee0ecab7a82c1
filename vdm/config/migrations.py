"""Migrations: everything that keeps old workdirs, checkpoints and configs loading, in one place.

Policy. A workdir (its config.json and checkpoints) loads, evaluates and resumes while its network version
is NETWORK_VERSION or NETWORK_VERSION - 1. A migration is kept until the change that raises NETWORK_VERSION
to the number in its "kept until" column: that change deletes its code, its row and the tests of it. After
that, a workdir of a version no longer served stops with one line (`network_version_problem`: "evaluate it
with the vdm of its time"). A config file or command line that sets a moved or removed key is served as long
as the workdirs of its time are: the rows of a key are dropped together.

    migration (its code here)                since                     kept until
    ---------------------------------------  ------------------------  ------------------------------------------
    network version 1                        de8f3a6, 2026-12-02       NETWORK_VERSION = 3
      (`network_version_problem`, `config_of_record`)
        accepts parameters of version 1 (GroupNorm of gcd(32, C) groups, before the GroupNorm fix 71997b4,
        2026-11-22 11:47 UTC) at widths that 32 divides: restored with model.norm_groups = 32, the function
        they computed; a version-1 config.json without norm_groups loads with it
    config.json without a network version    de8f3a6, 2026-12-02       NETWORK_VERSION = 4
      (`network_version_of`)
        accepts a config.json written before versions were recorded: dated by its `time`, before
        2026-11-22 12:00 UTC version 1, else 2
    checkpoint without a meta item           de8f3a6, 2026-12-02       NETWORK_VERSION = 4
      (`checkpoint_network_version`)
        accepts a checkpoint written before it had one: the version of its workdir's config.json, or
        NETWORK_VERSION where there is none
    checkpoint meta item without CRC-32      1b1cc33, 2026-12-05       NETWORK_VERSION = 4
      (none here: one `meta.get("crc32", {})` in `vdm.training.checkpoint`, the reader of the format)
        accepts a checkpoint written before the checksums: restored without the CRC-32 check
    removed keys                             de8f3a6, 2026-12-02       NETWORK_VERSION = 4
      (`REMOVED_KEYS`, `removed_key_error`, `config_of_record`)
        accepts model.fast_attention, fast_norm, fast_dropout_rng, loop_friendly_conv (now model.impl) in a
        config.json: dropped; a config file or an override that sets one stops with one line naming model.impl
    moved keys                               41d72af, 2026-12-02       NETWORK_VERSION = 4
      (`MOVED_KEYS`, `migrate`, `moved_key_error`)
        accepts loss.objective ('elbo' | 'simple') in a config.json, a config file or an override: mapped to
        loss.weighting ('elbo' | 'eps_mse'); a config built in code that sets it stops with one line
    training loss of objective version 1     ad33c0b, 2026-12-05       NETWORK_VERSION = 4
      (`OBJECTIVE_VERSIONS`, `objective_version_of`, `objective_problem`)
        accepts a config.json without `objective_version` (written before every weighting trained in bits/dim):
        evaluates, samples and computes likelihoods as it is; its training resumes under loss.weighting = elbo
        (the same loss in both versions) and stops with one line under any other weighting (a loss 1/ln 2 to
        1/(D ln 2) times the old: its Adam moments and gradient clip were set for another scale)
    keys added to the schema                 93455e7, 2026-11-22       permanent: the schema's rule (a new key
      (`config_of_record`)                                             defaults to what runs before it computed,
        accepts a config.json without a key added since: the key's     or gets a row here)
        default

Where the old things are met: `vdm.config.validation` (config files, overrides, validation),
`vdm.training.workdirs` (config.json: `load_config`, `recorded_network_version`; config.json
records NETWORK_VERSION when written), `vdm.training.checkpoint` (the version in each checkpoint's
meta item) and `vdm.model.VDM.network_version_problem` (the check against the network a config builds).

No jax here: config files import `vdm.config.validation`, which imports this module.
"""

from __future__ import annotations

from vdm.config.schema import base_config
from vdm.errors import ConfigError

# --- network versions ---------------------------------------------------------------------------------------------

# What the network (`vdm.nets.unet.ScoreUNet`) computes for its parameters. Checkpoints and config.json record it;
# a change of the network that keeps the parameter shapes but changes the function gets a new number and a line
# here (and the rows of the table above whose "kept until" it reaches go).
NETWORK_VERSION = 2
NETWORK_VERSIONS = {
    1: "GroupNorm of gcd(32, C) groups: 32 at widths that 32 divides, as the official network, one channel per "
       "group below (runs before 2026-11-22 12:00 UTC)",
    2: "GroupNorm of model.norm_groups groups, by default gcd(32, C/4): groups of >= 4 channels, so the "
       "per-channel time conditioning is not normalised away at widths under 128",
}

# The network version of a workdir written before config.json recorded one: version 1 until the GroupNorm change.
_VERSION_2_FROM = "2026-11-22T12:00:00"


def network_version_problem(stored: int, channels: int, norm_groups: int) -> str | None:
    """Why parameters written by network version `stored` do not compute, in this network, what they computed there.

    None when they do: the same version, or version 1 at a width that 32 divides where this
    network's GroupNorms have 32 groups (model.norm_groups = 32, or the default at widths that
    128 divides). That is the documented migration of version 1: at widths that 32 divides,
    load it with model.norm_groups = 32. Below (one channel per group) no setting computes it.
    """
    if stored == NETWORK_VERSION:
        return None
    if stored > NETWORK_VERSION or stored not in NETWORK_VERSIONS:
        return (f"it was written by network version {stored}, newer than this code's {NETWORK_VERSION} "
                f"({NETWORK_VERSIONS[NETWORK_VERSION]}); update vdm")
    migrates = stored == 1 and channels % 32 == 0
    if migrates and (norm_groups == 32 or (norm_groups == 0 and channels % 128 == 0)):
        return None
    fix = ("load it with --config.model.norm_groups=32, the function of version 1 at this width" if migrates else
           f"no setting of this code computes version {stored}'s function at width {channels}: retrain, or evaluate it "
           "with the vdm of its time")
    return (f"it was written by network version {stored} ({NETWORK_VERSIONS[stored]}), this code builds version "
            f"{NETWORK_VERSION} ({NETWORK_VERSIONS[NETWORK_VERSION]}): the same parameter shapes, another function; "
            + fix)


def network_version_of(record: dict) -> int:
    """The network version of the run a config.json `record` belongs to.

    config.json records it since 2026-12-02; an older one is dated: written before
    2026-11-22 12:00 UTC (the GroupNorm change) it is version 1, else version 2.
    """
    if "network_version" in record:
        return int(record["network_version"])
    return 1 if str(record.get("time", "9999"))[:19] < _VERSION_2_FROM else 2


def checkpoint_network_version(stored: int | None, fallback: int | None) -> int:
    """The network version a checkpoint's parameters belong to: the one its meta item recorded (`stored`); for a
    checkpoint written before it had one, `fallback` (its workdir's config.json), else NETWORK_VERSION."""
    if stored is not None:
        return stored
    return fallback if fallback is not None else NETWORK_VERSION


# --- the training loss ---------------------------------------------------------------------------------------------

# What the training loss of a config is. config.json records it; resuming training under another would change the
# loss's scale under the optimizer's state.
OBJECTIVE_VERSION = 2
OBJECTIVE_VERSIONS = {
    1: "loss.weighting = elbo trained the ELBO in bits/dim, every other weighting its L_w in nats per example "
       "(eps_mse and v_mse their means over dimensions)",
    2: "every weighting trains (prior + reconstruction + L_w) / (D ln 2), in bits/dim",
}
_SAME_LOSS_IN_EVERY_OBJECTIVE_VERSION = ("elbo",)


def objective_version_of(record: dict) -> int:
    """The objective version of the run a config.json `record` belongs to (recorded since ad33c0b, 2026-12-05)."""
    return int(record.get("objective_version", 1))


def objective_problem(stored: int, weighting: str) -> str | None:
    """Why training a run of objective version `stored` further here would change its loss; None if it would not."""
    if stored == OBJECTIVE_VERSION or weighting in _SAME_LOSS_IN_EVERY_OBJECTIVE_VERSION:
        return None
    return (f"this run trained loss.weighting = {weighting!r} under objective version {stored} "
            f"({OBJECTIVE_VERSIONS[stored]}); this code trains version {OBJECTIVE_VERSION} "
            f"({OBJECTIVE_VERSIONS[OBJECTIVE_VERSION]}): its Adam moments and gradient clip were set for another loss "
            "scale, so its training does not resume. --mode=eval, sample, likelihood and sample_quality use it as it "
            "is; to train on, start a new --workdir")


# --- config keys --------------------------------------------------------------------------------------------------

# Keys that existed once, with what replaced them: a config that sets one stops with this line; a workdir's
# config.json that has one loads without it (`config_of_record`).
REMOVED_KEYS = {
    "model.fast_attention": "the CPU-tuned forms are chosen together by 'model.impl' (auto | reference | cpu)",
    "model.fast_norm": "the CPU-tuned forms are chosen together by 'model.impl' (auto | reference | cpu)",
    "model.fast_dropout_rng": "the CPU-tuned forms are chosen together by 'model.impl' (auto | reference | cpu)",
    "model.loop_friendly_conv": "the CPU-tuned forms are chosen together by 'model.impl' (auto | reference | cpu)",
}


def removed_key_error(key: str) -> ConfigError:
    return ConfigError(f"config key '{key}' was removed: {REMOVED_KEYS[key]}")


# Keys that moved, with the key that took their place and how each old value maps: a config file that sets one
# (`vdm.config.validation.load_config_file`), a command-line override of one (`vdm.config.validation.parse_override`)
# and a workdir's config.json that has one (`config_of_record`) are mapped; a config built in code that still has one
# stops (`vdm.config.validation.validate`).
MOVED_KEYS = {
    "loss.objective": ("loss.weighting", {"elbo": "elbo", "simple": "eps_mse"}),
}


def moved_key_error(key: str, value=None) -> ConfigError:
    new, mapping = MOVED_KEYS[key]
    values = ", ".join(f"{old!r} -> {val!r}" for old, val in mapping.items())
    got = "" if value is None else f" (got {value!r})"
    return ConfigError(f"config key '{key}' moved to '{new}' ({values}){got}")


def migrate(config):
    """Maps the moved keys (`MOVED_KEYS`) of a ConfigDict in place to their new keys; returns it.

    ConfigError if an old value has no mapping, or if the config also sets the new key to another value.
    """
    for old, (new, mapping) in MOVED_KEYS.items():
        old_section, old_name = old.split(".")
        new_section, new_name = new.split(".")
        section = config.get(old_section)
        if section is None or old_name not in section:
            continue
        value = section[old_name]
        if value not in mapping:
            raise moved_key_error(old, value)
        current, default = config[new_section].get(new_name), base_config()[new_section][new_name]
        if current not in (default, mapping[value]):
            raise ConfigError(f"config key '{old}' = {value!r} (moved to '{new}' = {mapping[value]!r}) contradicts "
                              f"'{new}' = {current!r}; set '{new}' only")
        del section[old_name]
        config[new_section][new_name] = mapping[value]
    return config


# --- a workdir's config.json --------------------------------------------------------------------------------------


def config_of_record(record: dict):
    """The config of a workdir's config.json `record` (its "config" object a dict) on today's schema.

    Keys removed from the schema are dropped (`REMOVED_KEYS`: they chose among forms of the same
    function); keys that moved are mapped to their new keys (`MOVED_KEYS`: loss.objective 'simple' ->
    loss.weighting 'eps_mse', the same training loss); keys added since take their defaults, except
    that a run of network version 1 at a width that 32 divides gets model.norm_groups = 32, that
    version's function.
    """
    saved = record["config"]
    config = base_config()  # keys added to vdm/config/schema.py after the run started take their defaults
    for section, values in saved.items():
        if section in config and isinstance(values, dict):
            config[section].update({k: v for k, v in values.items() if f"{section}.{k}" not in REMOVED_KEYS})
        else:
            config[section] = values
    migrate(config)
    config.data.image_shape = tuple(config.data.image_shape)  # a list in JSON
    if (network_version_of(record) == 1 and "norm_groups" not in saved.get("model", {})
            and config.model.channels % 32 == 0):
        config.model.norm_groups = 32  # version 1's function at this width (`network_version_problem`)
    return config
