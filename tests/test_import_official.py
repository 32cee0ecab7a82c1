"""Checkpoints of the official VDM code import exactly: the same parameters, and the same numbers as the official model.

tests/fixtures/official_vdm_c32/ was written by the official model_vdm.py (README there):
a 32-channel, 2-block model in the official checkpoint format and that code's own
ELBO terms and network output for 4 images, with its own noise and times. Imported,
our losses with the same draws give the same per-example terms to 1e-4 (measured:
reconstruction ~3e-5, float32 rounding of z_0 / alpha_0 amplified by SNR_0; the rest
<= 3e-6). The paper-size test maps a tree of the official names and shapes at
configs/cifar10.py size (no 120 MB file here). The command-line tests import the
fixture as a workdir and evaluate and sample it with `python -m vdm.main --workdir=W`.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, main_in_process
from vdm.config.validation import load_config_file, parse_override
from vdm.errors import CheckpointError, ConfigError
from vdm.training import official, official_params

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "official_vdm_c32")
CHECKPOINT = os.path.join(FIXTURE, "checkpoints-0")
CIFAR10 = os.path.join(ROOT, "configs", "cifar10.py")


def cifar10_config(**overrides):
    config = load_config_file(CIFAR10)
    for key, value in overrides.items():
        parse_override(config, key.replace("__", "."), value)
    return config


def flat(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def official_tree(which="ema_params"):
    from flax import serialization

    with open(os.path.join(CHECKPOINT, "ckpt-1.flax"), "rb") as f:
        return serialization.msgpack_restore(f.read())[which]


@pytest.fixture(scope="module")
def imported():
    return official_params.import_checkpoint(CHECKPOINT, cifar10_config(data__image_shape="(8, 8, 3)"))


def test_the_fixture_gives_the_official_models_numbers(imported):
    """Our ELBO terms and network output for the official draws equal the official model's own, per example."""
    from vdm.core import diffusion, losses, objective

    e = dict(np.load(os.path.join(FIXTURE, "expected.npz")))
    model = imported.model
    assert imported.config.model.norm_groups == 32 and imported.config.model.channels == 32
    assert imported.checkpoint.step == 123456

    @jax.jit
    def ours(params):
        eps_hat_fn, gamma_fn = model.eps_hat_fn(params), model.gamma_fn(params)
        x = losses.scale_data(e["images"], model.vocab_size)
        gamma_0 = gamma_fn(jnp.zeros(4))
        gamma_1 = gamma_fn(jnp.ones(4))
        return {
            "loss_recon": losses.reconstruction_loss(e["images"], diffusion.q_sample(x, gamma_0, e["eps_0"]), gamma_0,
                                                     model.vocab_size),
            "loss_klz": losses.prior_kl(x, gamma_1),
            "loss_diff": objective.diffusion_loss(x, e["eps"], *objective.gamma_and_rate(gamma_fn, e["t"]), eps_hat_fn)[1],
            "eps_hat": eps_hat_fn(jnp.asarray(e["z_t"]), jnp.asarray(e["gamma_t"])),
            "gamma_t": gamma_fn(jnp.asarray(e["t"])),
            "z_t": diffusion.q_sample(x, gamma_fn(jnp.asarray(e["t"])), e["eps"]),
            "terms": losses.elbo_terms(e["images"], {k: e[k] for k in ("t", "eps_0", "eps")}, eps_hat_fn, gamma_fn,
                                       model.vocab_size, decoder_window=model.decoder_window),
        }

    got = jax.device_get(ours(imported.ema_params))
    for name in ("loss_recon", "loss_klz", "loss_diff", "gamma_t"):
        rel = np.abs(got[name] - e[name]) / np.abs(e[name])
        assert rel.max() < 1e-4, (name, rel)
    for name in ("eps_hat", "z_t"):
        assert np.abs(got[name] - e[name]).max() / np.abs(e[name]).max() < 1e-4, name
    # the model's own ELBO (its decoder window of configs/cifar10.py) on the same draws: the same bits/dim
    terms = got["terms"]
    np.testing.assert_allclose(terms["reconstruction"], e["loss_recon"], rtol=1e-4)
    np.testing.assert_allclose(terms["bpd"], e["bpd"], rtol=1e-4)


def test_params_and_ema_params_are_the_official_values_in_both_network_forms(imported):
    for which, ours in (("params", imported.params), ("ema_params", imported.ema_params)):
        theirs = {k: v for k, v in flat(official_tree(which)).items()}
        ours_flat = flat(ours)
        assert sum(v.size for v in ours_flat.values()) == sum(v.size for v in theirs.values()) == 223_557
        assert len(theirs) == 91 and len(ours_flat) == 60  # scanned: one leaf per stack and name (+ 2 of gamma)
        np.testing.assert_array_equal(ours_flat["net/down/block/conv1/kernel"][1],
                                      theirs["score_model/down.block_1/conv1/kernel"])
        np.testing.assert_array_equal(ours_flat["net/up/block/nin_shortcut/kernel"][2],
                                      theirs["score_model/up.block_2/nin_shortcut/kernel"])
        np.testing.assert_array_equal(ours_flat["net/mid_attn/q/kernel"], theirs["score_model/mid.attn_1/q/kernel"])
        b, w = float(theirs["gamma/b"][0]), float(theirs["gamma/w"][0])
        g = imported.model.gamma_fn(ours)(jnp.array([0.0, 0.3, 1.0]))
        np.testing.assert_allclose(g, [b, b + 0.3 * abs(w), b + abs(w)], rtol=1e-6)
    assert float(official_tree("params")["gamma"]["b"][0]) != float(official_tree()["gamma"]["b"][0])
    # learnable_scalar takes |w|: a negative w is the same schedule
    negative = official_tree()
    negative["gamma"]["w"] = -negative["gamma"]["w"]
    g = imported.model.gamma_fn(official_params.map_params(negative, imported.model))(jnp.array([0.0, 0.3, 1.0]))
    np.testing.assert_allclose(g, [-12.9, -12.9 + 0.3 * 17.9, 5.0], rtol=1e-6)
    # the loop form (model.scan_blocks=False): block i of the scanned stack is down_i / up_i, the same values
    config = cifar10_config(data__image_shape="(8, 8, 3)", model__scan_blocks="False")
    loop = official_params.import_checkpoint(CHECKPOINT, config)
    loop_flat, scan_flat = flat(loop.ema_params), flat(imported.ema_params)
    assert len(loop_flat) == 91 and sum(v.size for v in loop_flat.values()) == 223_557
    for path, value in scan_flat.items():
        head, _, rest = path[len("net/"):].partition("/") if path.startswith("net/") else ("", "", "")
        if head in ("down", "up"):
            for i in range(value.shape[0]):
                np.testing.assert_array_equal(loop_flat[f"net/{head}_{i}/{rest}"], value[i])
        else:
            np.testing.assert_array_equal(loop_flat[path], value)


def _nnet_gamma(p, t):
    """The official learnable_nnet in float64 numpy, written out: |l1| t + b1 + |l3| . (2 sigmoid(|l2| (2t-1) + b2) - 1) / n."""
    t = np.asarray(t, np.float64)[:, None]
    k = {name: np.abs(np.asarray(p[name]["kernel"], np.float64)) for name in ("l1", "l2", "l3")}
    h = t @ k["l1"] + p["l1"]["bias"]
    u = 2 * (1 / (1 + np.exp(-((2 * t - 1) @ k["l2"] + p["l2"]["bias"]))) - 0.5)
    return (h + u @ k["l3"] / k["l2"].shape[1])[:, 0]


def test_the_official_schedules_import_exactly():
    """learnable_nnet -> official_nnet (the same function of the same weights), fixed -> fixed_linear."""
    rng = np.random.default_rng(0)
    params = official_tree()
    params["gamma"] = {"l1": {"kernel": np.float32([[-17.0]]), "bias": np.float32([-12.5])},
                       "l2": {"kernel": rng.normal(0, 1, (1, 1024)).astype(np.float32),
                              "bias": rng.normal(0, 1, (1024,)).astype(np.float32)},
                       "l3": {"kernel": rng.normal(0, 3, (1024, 1)).astype(np.float32)}}
    config, keys = official_params.configure(cifar10_config(data__image_shape="(8, 8, 3)"), params)
    assert keys["schedule.name"] == "official_nnet"
    from vdm.model import VDM

    model = VDM.from_config(config)
    ours = official_params.map_params(params, model)
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(model.gamma_fn(ours)(jnp.asarray(t)), _nnet_gamma(params["gamma"], t), rtol=1e-5)
    del params["gamma"]
    config, keys = official_params.configure(cifar10_config(data__image_shape="(8, 8, 3)"), params)
    assert keys["schedule.name"] == "fixed_linear"
    model = VDM.from_config(config)
    ours = official_params.map_params(params, model)
    np.testing.assert_allclose(model.gamma_fn(ours)(jnp.asarray([0.0, 1.0])), [-13.3, 5.0], rtol=1e-6)


def _model_vdm_shapes(c: int, n: int, image_channels: int = 3, fourier: bool = True, attention: bool = False) -> dict:
    """The parameter paths and shapes of the official model_vdm.py (VDM.score_model, VDM.gamma learnable_scalar)."""
    out = {"gamma/w": (1,), "gamma/b": (1,)}

    def add(prefix, **shapes):
        out.update({f"score_model/{prefix}/{k.replace('__', '/')}": v for k, v in shapes.items()})

    def norm(prefix, name, ch):
        add(prefix, **{f"{name}__scale": (ch,), f"{name}__bias": (ch,)})

    def resnet(prefix, c_in):
        norm(prefix, "GroupNorm_0", c_in)
        norm(prefix, "GroupNorm_1", c)
        add(prefix, conv1__kernel=(3, 3, c_in, c), conv1__bias=(c,), cond_proj__kernel=(4 * c, c),
            conv2__kernel=(3, 3, c, c), conv2__bias=(c,))
        if c_in != c:
            add(prefix, nin_shortcut__kernel=(c_in, c), nin_shortcut__bias=(c,))

    def attn(prefix):
        norm(prefix, "GroupNorm_0", c)
        for name in ("q", "k", "v", "proj_out"):
            add(prefix, **{f"{name}__kernel": (c, c), f"{name}__bias": (c,)})

    add("dense0", kernel=(c + 1, 4 * c), bias=(4 * c,))
    add("dense1", kernel=(4 * c, 4 * c), bias=(4 * c,))
    add("conv_in", kernel=(3, 3, image_channels * (5 if fourier else 1), c), bias=(c,))
    for i in range(n):
        resnet(f"down.block_{i}", c)
        if attention:
            attn(f"down.attn_{i}")
    resnet("mid.block_1", c)
    attn("mid.attn_1")
    resnet("mid.block_2", c)
    for i in range(n + 1):
        resnet(f"up.block_{i}", 2 * c)
        if attention:
            attn(f"up.attn_{i}")
    norm("", "GroupNorm_0", c)
    add("conv_out", kernel=(3, 3, c, image_channels), bias=(image_channels,))
    return {k.replace("score_model//", "score_model/"): v for k, v in out.items()}


def _to_official_layout(ours: dict) -> dict:
    """Our network's {path: shape} (scanned stacks) renamed to model_vdm.py's paths, written out here on its own."""
    mid = {"mid_block_1": "mid.block_1", "mid_attn": "mid.attn_1", "mid_block_2": "mid.block_2"}
    out = {}
    for path, shape in ours.items():
        head, _, rest = path.partition("/")
        if head in ("down", "up"):
            kind, _, inner = rest.partition("/")
            out.update({f"score_model/{head}.{kind}_{i}/{inner}": shape[1:] for i in range(shape[0])})
        else:
            out[f"score_model/{mid.get(head, head)}/{rest}"] = shape
    return out


def test_the_paper_sized_official_tree_imports_with_nothing_left_over():
    """At configs/cifar10.py size: our net's shapes, named as in model_vdm.py, are that file's tree and import whole."""
    from vdm.nets import ScoreUNet

    net = ScoreUNet(norm_groups=32)  # the paper's network: 128 channels, 32 blocks
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)))["params"])
    layout = {**_to_official_layout({k: v.shape for k, v in flat(shapes).items()}), "gamma/w": (1,), "gamma/b": (1,)}
    assert layout == _model_vdm_shapes(128, 32)
    assert sum(int(np.prod(s)) for s in layout.values()) == 30_578_181  # the official count
    tree = {}
    for path, shape in layout.items():  # read-only views of one value: no 120 MB of memory per leaf
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = np.broadcast_to(np.float32(0.5), shape)
    config, keys = official_params.configure(cifar10_config(), tree)
    assert {k: keys[k] for k in ("model.channels", "model.num_blocks", "model.attention_per_block", "model.cond_dim",
                                 "model.fourier_features", "schedule.name")} == {
        "model.channels": 128, "model.num_blocks": 32, "model.attention_per_block": False, "model.cond_dim": 1,
        "model.fourier_features": True, "schedule.name": "learned_linear"}
    from vdm.model import VDM

    params = official_params.map_params(tree, VDM.from_config(config))
    assert sum(x.size for x in jax.tree.leaves(params)) == 30_578_181
    # one leaf too many, one missing: the import stops naming them
    tree["score_model"]["extra"] = {"kernel": np.zeros((2,), np.float32)}
    del tree["score_model"]["up.block_32"]["conv2"]["bias"]
    with pytest.raises(CheckpointError, match=r"left over: score_model/extra/kernel.*not in the checkpoint: "
                                              r"score_model/up.block_32/conv2/bias"):
        official_params.map_params(tree, VDM.from_config(config))


def _official_cli(monkeypatch, capsys, *args) -> tuple:
    """(exit code, stdout, stderr) of `python -m vdm.import_official ARGS`, run in this process."""
    monkeypatch.setattr(sys, "argv", ["vdm.import_official", *args])
    code = 0
    try:
        official.cli()
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_bad_checkpoint_or_a_contradicting_override_stops_with_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                                            capsys):
    workdir = tmp_path / "w"
    code, _, err = _official_cli(monkeypatch, capsys, f"--checkpoint={tmp_path / 'nowhere'}", f"--workdir={workdir}")
    assert code == 1 and err.count("\n") == 1 and err.startswith("vdm: checkpoint error: official checkpoint "), err
    truncated = tmp_path / "ckpt-1.flax"
    data = open(os.path.join(CHECKPOINT, "ckpt-1.flax"), "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = _official_cli(monkeypatch, capsys, f"--checkpoint={truncated}", f"--workdir={workdir}")
    assert code == 1 and err.count("\n") == 1 and "cannot read" in err and "truncated" in err, err
    code, _, err = _official_cli(monkeypatch, capsys, f"--checkpoint={CHECKPOINT}", f"--workdir={workdir}",
                                 "--config.model.channels=128")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("vdm: config error: --config.model.channels=128 contradicts") and "is 32" in err, err
    code, _, err = _official_cli(monkeypatch, capsys, f"--checkpoint={CHECKPOINT}", f"--workdir={workdir}",
                                 "--config.model.norm_groups=8")
    assert code == 2 and "model.norm_groups is 32" in err, err
    code, _, err = _official_cli(monkeypatch, capsys, f"--checkpoint={CHECKPOINT}", f"--workdir={workdir}",
                                 "--config.data.augmentation=dihedral")
    assert code == 2 and err.count("\n") == 1 and "feeds 7 conditioning inputs" in err and "takes 1" in err, err
    assert not workdir.exists() and os.listdir(tmp_path) == ["ckpt-1.flax"]




@pytest.mark.slow  # imports, evaluates and samples a whole workdir (~30 s on 2 cores); the mapping tests above stay fast
def test_an_imported_workdir_evaluates_and_samples_without_config(tmp_path, capsys):
    """import_official (the command) writes a workdir; vdm.main --workdir=W alone evaluates and samples it.

    The 8x8-trained convolutional net runs at 16x16 on the bundled photo patches (the right channel count).
    """
    workdir = tmp_path / "imported"
    proc = subprocess.run(
        [sys.executable, "-m", "vdm.import_official", f"--checkpoint={CHECKPOINT}", f"--workdir={workdir}",
         "--config.data.name=photo_patches16", "--config.data.image_shape=(16, 16, 3)", "--config.eval.num_repeats=1",
         "--config.eval.batch_size=520", "--config.eval.num_samples=4", "--config.eval.sampler_steps=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"workdir={workdir}" and "official step 123456" in lines[0] and "223,557 parameters" in lines[0]
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["imported_from"]["official_step"] == 123456
    assert stored["imported_from"]["checkpoint"].endswith("ckpt-1.flax")
    assert stored["config"]["model"]["norm_groups"] == 32 and stored["config"]["model"]["channels"] == 32
    assert os.listdir(workdir / "checkpoints") == ["123456"]
    out = main_in_process([f"--workdir={workdir}", "--mode=eval"], capsys)
    last = out.strip().splitlines()[-1]
    assert last.startswith("test_bpd=") and 5 < float(last.split()[0].split("=")[1]) < 40, out
    out = main_in_process([f"--workdir={workdir}", "--mode=sample", "--sampler=ddim", "--steps=50"], capsys)
    assert "T = 50: 4 samples" in out, out
    samples = np.load(workdir / "samples_ddim.npz")["samples"]
    assert samples.shape == (4, 16, 16, 3) and samples.min() >= 0 and samples.max() <= 255
    # a later write of config.json (as training does when it starts) keeps the import record
    from vdm.training import workdirs

    workdirs.write_config(workdirs.load_config(str(workdir)), str(workdir))
    assert json.loads((workdir / "config.json").read_text())["imported_from"] == stored["imported_from"]


def test_main_without_config_needs_a_workdir_with_a_config_json(tmp_path):
    from vdm import main as cli

    with pytest.raises(ConfigError, match=f"missing --config=configs/NAME.py: {tmp_path} has no config.json"):
        cli.precheck(["vdm.main", f"--workdir={tmp_path}", "--mode=eval"])
    shutil.rmtree(tmp_path)
    with pytest.raises(ConfigError, match=r"missing --config=configs/NAME.py \(or a --workdir with a config.json\)"):
        cli.precheck(["vdm.main", "--mode=eval"])
