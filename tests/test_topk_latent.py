"""MuLAN's top-k latent (`vdm.nets.latent.TopKLatent`) against brute force: the draws follow Plackett-Luce, the KL
estimate averages to the KL enumerated over every ordered draw, and the latent's value is an exact multi-hot."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm.nets.latent import TopKLatent, topk_kl

D, K = 5, 3
LOGITS = np.array([1.3, -0.4, 0.0, 2.1, -1.5])


def _ordered_probabilities(logits, k):
    """{(pi_1 .. pi_k): q(pi)} for every ordered draw of k slots without replacement, q_j = softmax of what is left."""
    out = {}
    for order in itertools.permutations(range(len(logits)), k):
        left, p = list(range(len(logits))), 1.0
        for i in order:
            w = np.exp(logits[left])
            p *= math.exp(logits[i]) / w.sum()
            left.remove(i)
        out[order] = p
    return out


def _exact_ordered_kl(logits, k):
    log_p = -sum(math.log(len(logits) - j) for j in range(k))
    return sum(q * (math.log(q) - log_p) for q in _ordered_probabilities(logits, k).values())


def _draws(n, logits=LOGITS, seed=0):
    latent = TopKLatent(D, K)
    noise = latent.noise(jax.random.key(seed), (n, D))
    c, kl = jax.jit(latent.posterior)(jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, D)), noise)
    order = jax.lax.top_k(jnp.asarray(logits, jnp.float32) + noise, K)[1]
    return np.asarray(c), np.asarray(kl, np.float64), np.asarray(order)


def test_draws_follow_plackett_luce_and_the_latent_is_an_exact_multi_hot():
    n = 200_000
    c, _, order = _draws(n)
    assert set(np.unique(c)) == {0.0, 1.0} and np.all(c.sum(-1) == K)
    np.testing.assert_array_equal(c, np.sum(np.eye(D)[order], axis=1))
    probs = _ordered_probabilities(LOGITS, K)
    codes = order @ (D ** np.arange(K))
    for perm, q in probs.items():
        freq = np.mean(codes == np.dot(perm, D ** np.arange(K)))
        assert abs(freq - q) < 4 * math.sqrt(q * (1 - q) / n) + 1e-4, (perm, freq, q)


def test_kl_estimate_averages_to_the_kl_enumerated_over_every_ordered_draw():
    n = 100_000
    _, kl, order = _draws(n, seed=1)
    exact = _exact_ordered_kl(LOGITS, K)
    assert abs(kl.mean() - exact) < 4 * kl.std() / math.sqrt(n), (kl.mean(), exact)
    # brute-force Monte Carlo: log q(pi) - log p(pi) of the same draws, averaged
    probs = _ordered_probabilities(LOGITS, K)
    log_p = -sum(math.log(D - j) for j in range(K))
    naive = np.array([math.log(probs[tuple(o)]) - log_p for o in order])
    se = naive.std() / math.sqrt(n)
    assert abs(naive.mean() - exact) < 4 * se and abs(naive.mean() - kl.mean()) < 4 * se
    assert kl.std() < naive.std()  # the exact conditional entropies: a lower-variance estimate of the same KL
    # the set's KL is at most the ordered draw's: the ELBO with the ordered latent is still a bound
    sets = {}
    for perm, q in probs.items():
        sets[frozenset(perm)] = sets.get(frozenset(perm), 0.0) + q
    set_kl = sum(q * (math.log(q) + math.log(math.comb(D, K))) for q in sets.values())
    assert 0 < set_kl <= exact


def test_kl_is_zero_at_uniform_logits_and_the_categorical_kl_for_one_slot():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, D)), jnp.float32)
    order = jax.lax.top_k(logits, 1)[1]
    q = jax.nn.softmax(logits)
    categorical = jnp.sum(q * (jnp.log(q) + math.log(D)), -1)  # KL(softmax(l) || Uniform(d)), MuLAN's term
    np.testing.assert_allclose(topk_kl(logits, order), categorical, rtol=1e-5)
    np.testing.assert_allclose(topk_kl(jnp.zeros((2, D)), jnp.array([[0, 3, 1], [4, 2, 0]])), 0.0, atol=1e-6)


def test_prior_draws_every_set_of_k_slots_equally_often():
    n = 100_000
    c = np.asarray(TopKLatent(D, K).prior(jax.random.gumbel(jax.random.key(3), (n, D))))
    codes = c @ (2 ** np.arange(D))
    counts = np.bincount(codes.astype(int), minlength=2**D)[[sum(2**i for i in s) for s in itertools.combinations(range(D), K)]]
    p = 1 / math.comb(D, K)
    assert counts.sum() == n
    assert np.all(np.abs(counts / n - p) < 4 * math.sqrt(p * (1 - p) / n))
    # the prior's mean, the latent a model uses when asked for its schedule without one: k / d per slot
    mean = np.asarray(TopKLatent(D, K).prior_mean(1))[0]
    assert np.all(np.abs(c.mean(0) - mean) < 4 * np.sqrt(mean * (1 - mean) / n)), (c.mean(0), mean)


def test_gradients_reach_the_logits_through_the_straight_through_latent_and_the_kl():
    latent = TopKLatent(D, K)
    noise = latent.noise(jax.random.key(4), (2, D))
    weights = jnp.arange(D, dtype=jnp.float32)
    logits = jnp.asarray(np.stack([LOGITS, -LOGITS]), jnp.float32)
    through_c = jax.grad(lambda l: jnp.sum(latent.posterior(l, noise)[0] * weights))(logits)
    through_kl = jax.grad(lambda l: jnp.sum(latent.posterior(l, noise)[1]))(logits)
    for g in (through_c, through_kl):
        assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) > 1e-3
