"""Training pieces: loss goes down, eval terms add up, EMA and weight-decay mask do what they say."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdm.config.validation import load_config_file
from vdm.data import pipeline as data
from vdm.training import optim
from vdm.training.evaluation import evaluate
from vdm.model import VDM
from vdm.training.steps import create_train_state, make_eval_step, make_train_step


@pytest.fixture(scope="module")
def tiny():
    config = load_config_file("configs/tiny.py")
    model = VDM.from_config(config)
    return config, model, data.load_dataset("digits")


@pytest.fixture(scope="module")
def tiny_training(tiny):
    """(fresh_state(), train_step) of the tiny config's optimizer, EMA decay 0.99: one compiled program each,
    shared by the tests below that train with it."""
    config, model, _ = tiny
    tx, lr = optim.make_optimizer(config.optim, 100)
    return fresh_state_fn(model, tx), make_train_step(model, tx, lr, 0.99)


def fresh_state_fn(model, tx):
    """() -> create_train_state as one compiled program (op by op, a first init compiles every op: ~3x longer)."""
    init = jax.jit(lambda k: create_train_state(model, tx, k))
    return lambda: init(jax.random.key(0))


_SOURCE = {}


def train_batches(batch_size, first, num, seed=0):
    """Global training batches first .. first + num - 1 of the digits pipeline, leaves [num, B, ...]."""
    if "digits" not in _SOURCE:
        _SOURCE["digits"] = data.Source("digits", "train")
    ds = data.train_dataset(_SOURCE["digits"], batch_size, seed)
    items = [ds[first + i] for i in range(num)]
    return {k: np.stack([b[k] for b in items]) for k in items[0]}


def test_a_few_train_steps_lower_the_loss(tiny, tiny_training):
    config, model, ds = tiny
    fresh_state, step = tiny_training
    state = fresh_state()
    eval_step = make_eval_step(model)
    batch = {**jax.tree.map(lambda b: b[0], train_batches(64, 0, 1)), "index": np.arange(64, dtype=np.int32)}
    key = jax.random.key(5)

    def held_fixed_loss(params):  # same batch, same noise, same t: only the parameters change
        return float(np.mean(eval_step(params, batch, key)["bpd"]))

    before = held_fixed_loss(state.params)
    for i in range(25):
        state, metrics = step(state, train_batches(16, i, 1), jax.random.key(1))
    after = held_fixed_loss(state.params)
    assert int(state.step) == 25
    assert after < 0.8 * before, (before, after)
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())


def test_several_steps_per_call_equal_single_steps(tiny_training):
    fresh_state, step = tiny_training
    s1 = fresh_state()
    for i in range(2):
        s1, _ = step(s1, train_batches(16, i, 1), jax.random.key(1))
    s2 = fresh_state()
    s2, m = step(s2, train_batches(16, 0, 2), jax.random.key(1))
    assert m["loss"].shape == (2,)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_evaluation_equals_a_per_example_loop(tiny):
    """`evaluate` over the 297 test digits in padded batches of 100 equals a brute-force loop that evaluates each
    example alone with its index and the repeat's key (to 1e-6): padded rows never count, every example's draws
    are its own whatever the batch, and both errors follow their formulas."""
    config, model, ds = tiny
    params = model.init(jax.random.key(0))
    step, key, repeats = make_eval_step(model), jax.random.key(3), 2
    res = evaluate(step, params, ds.test, 100, key, num_repeats=repeats)
    n = len(ds.test)
    one = {"images": ds.test.images[:1], "labels": ds.test.labels[:1], "index": np.zeros(1, np.int32)}
    values = np.array([[float(step(params, {**one, "images": ds.test.images[i:i + 1], "labels": ds.test.labels[i:i + 1],
                                           "index": np.array([i], np.int32)}, jax.random.fold_in(key, r))["bpd"][0])
                        for i in range(n)] for r in range(repeats)])
    assert res["bpd"] == pytest.approx(values.mean(), rel=1e-6)
    assert res["bpd_stderr"] == pytest.approx(values.mean(axis=0).std(ddof=1) / math.sqrt(n), rel=1e-5)
    assert res["bpd_mc_stderr"] == pytest.approx(math.sqrt(values.var(axis=0, ddof=1).sum() / repeats) / n, rel=1e-5)


def test_ema_update_formula_and_warmup():
    assert float(optim.ema_decay(0.9999, 0)) == pytest.approx(0.1)
    assert float(optim.ema_decay(0.9999, 90)) == pytest.approx(91 / 100)
    assert float(optim.ema_decay(0.9, 10_000)) == pytest.approx(0.9)
    ema = {"w": jnp.array([1.0, 2.0])}
    new = optim.ema_update(ema, {"w": jnp.array([3.0, 0.0])}, 0.9, 1000)
    np.testing.assert_allclose(new["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2], rtol=1e-6)


def test_ema_inside_train_step(tiny_training):
    fresh_state, step = tiny_training
    state = fresh_state()
    old_ema = jax.tree.map(np.asarray, state.ema_params)
    state, _ = step(state, train_batches(16, 0, 1), jax.random.key(1))
    d = 2 / 11  # warmed-up decay after the first update: min(0.99, (1 + 1) / (10 + 1))
    for e, o, p in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(old_ema), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(e, d * o + (1 - d) * np.asarray(p), rtol=1e-5, atol=1e-7)


def test_weight_decay_mask_decays_only_kernels_and_embeddings(tiny):
    _, model, _ = tiny
    params = model.init(jax.random.key(0))
    mask = optim.weight_decay_mask(params)
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    assert any(m for k, m in flat.items() if k.endswith("['kernel']"))
    for k, m in flat.items():
        assert m == (k.endswith("['kernel']") or k.endswith("['embedding']")), k
    # one AdamW step with zero gradients: only decayed leaves move
    cfg = load_config_file("configs/tiny.py").optim
    cfg.warmup_steps = 0
    tx, _ = optim.make_optimizer(cfg, 10)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(ones), ones)  # one program, not op by op
    new = optax.apply_updates(ones, updates)
    for (path, leaf), m in zip(jax.tree_util.tree_leaves_with_path(new), jax.tree.leaves(mask)):
        if m:
            assert float(jnp.max(leaf)) < 1.0, jax.tree_util.keystr(path)
        else:
            np.testing.assert_array_equal(leaf, 1.0)


def test_gradient_accumulation_updates_once_per_k_micro_batches(tiny):
    config, model, ds = tiny
    cfg = config.copy_and_resolve_references().optim
    cfg.accumulate_steps = 2
    cfg.warmup_steps = 0
    tx, lr = optim.make_optimizer(cfg, 100)
    state = fresh_state_fn(model, tx)()
    step = make_train_step(model, tx, lr, 0.99)
    p0 = jax.tree.map(np.asarray, state.params)
    state, _ = step(state, train_batches(16, 0, 1), jax.random.key(1))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p0)):
        np.testing.assert_array_equal(a, b)  # first micro-step: no update yet
    state, _ = step(state, train_batches(16, 1, 1), jax.random.key(1))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p0)))


def test_schedule_lr_scale_multiplies_only_the_interior_updates():
    from vdm.config.validation import apply_overrides

    config = apply_overrides(load_config_file("configs/tiny.py"), {
        "schedule.name": "monotone_net", "schedule.width": 8, "optim.warmup_steps": 0, "optim.grad_clip": 0.0})
    params = VDM.from_config(config).init(jax.random.key(0))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)

    def first_update(scale):
        cfg = config.optim.copy_and_resolve_references()
        cfg.schedule_lr_scale = scale
        tx, _ = optim.make_optimizer(cfg, 10)
        return jax.jit(tx.update)(grads, tx.init(params), params)[0]

    plain, scaled = first_update(1.0), first_update(10.0)
    mask = optim.schedule_interior_mask(params)
    assert sum(jax.tree.leaves(mask)) == len(jax.tree.leaves(params["schedule"]["interior"])) > 0
    for a, b, m in zip(jax.tree.leaves(plain), jax.tree.leaves(scaled), jax.tree.leaves(mask)):
        np.testing.assert_allclose(b, a * (10.0 if m else 1.0), rtol=1e-6)


def test_metrics_reach_the_host_once_per_log_line(tmp_path, monkeypatch):
    """The loop dispatches steps without waiting: no device-to-host transfer inside a train call, one fetch of
    the pending metrics per log line, and the log rows still hold the means of every step since the last."""
    import json

    from conftest import tiny_config
    from vdm.training import distributed, loop

    config = tiny_config(training__num_steps=8, training__steps_per_call=1, training__log_every=4,
                         checkpoint__every_steps=8)
    events, inside = [], [False]
    real_to_host, real_call, real_fetch = distributed.to_host, loop._Training.train_call, loop._Training.host_metrics

    def to_host(x):
        if inside[0]:
            events.append(("to_host inside a train call", None))
        return real_to_host(x)

    def train_call(self):
        inside[0] = True
        try:
            real_call(self)
        finally:
            inside[0] = False

    def host_metrics(self):
        before = self.fetched
        out = real_fetch(self)
        if out is not before:
            events.append(("fetch", self.step, len(out["loss"])))
        return out

    monkeypatch.setattr(distributed, "to_host", to_host)
    monkeypatch.setattr(loop._Training, "train_call", train_call)
    monkeypatch.setattr(loop._Training, "host_metrics", host_metrics)
    loop.train_and_evaluate(config, str(tmp_path))
    assert events == [("fetch", 4, 4), ("fetch", 8, 4)], events
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [4, 8]
    assert all(math.isfinite(r["bpd"]) and r["rejected_steps"] == 0 for r in train)
