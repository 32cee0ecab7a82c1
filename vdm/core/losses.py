"""ELBO terms of a VDM as pure functions of arrays and callables.

Data are integers x in {0, ..., V-1}^D, mapped to x~ = 2 (x + 1/2) / V - 1 in
(-1, 1). With z_t ~ q(z_t | x) and a denoiser eps_hat_fn(z_t, gamma_t):

    -log p(x) <= prior + reconstruction + diffusion        (nats per example)
    prior          = KL(q(z_1 | x) || N(0, I))
    reconstruction = -E_{q(z_0|x)} log p(x | z_0)            (discretised decoder)
    diffusion      = L_T (num_steps = T) or L_inf (num_steps = 0)

Callables:
    eps_hat_fn(z [B, ...], gamma [B]) -> eps_hat [B, ...]
    gamma_fn(t [B]) -> gamma [B]      (elementwise, strictly increasing)

Every function returns per-example values ``[B]`` in nats unless named otherwise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vdm.core import diffusion
from vdm.core.schedules import gamma_and_derivative

__all__ = [
    "scale_data",
    "bin_centers",
    "low_discrepancy_times",
    "diffusion_loss",
    "diffusion_loss_and_eps_error",
    "weighted_diffusion_loss",
    "weighted_loss_from_error",
    "training_loss_per_example",
    "simple_loss",
    "prior_kl",
    "decoder_logits",
    "decoder_log_probs",
    "reconstruction_loss",
    "elbo_noise",
    "elbo_terms",
    "with_totals",
    "squared_eps_error",
    "bits_per_dim",
    "variance_minimizing_value_and_grad",
]


def _sum_except_batch(a):
    return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def scale_data(x_int, vocab_size: int):
    """x in {0..V-1} -> bin centre x~ = 2 (x + 1/2) / V - 1, float32."""
    return 2.0 * (jnp.asarray(x_int, jnp.float32) + 0.5) / vocab_size - 1.0


def bin_centers(vocab_size: int):
    """The V values x~_k = 2 (k + 1/2) / V - 1, shape [V]."""
    return scale_data(jnp.arange(vocab_size), vocab_size)


def low_discrepancy_times(key, batch_size: int, start_index=0, global_batch_size: int | None = None):
    """t_i = mod(u + i / B_global, 1) with one shared u ~ U[0, 1).

    i runs over `start_index, ..., start_index + batch_size - 1`, so each device
    or host asks for its own slice of one global stratified draw.

    Returns:
      t [batch_size] in [0, 1).
    """
    n = global_batch_size or batch_size
    u = jax.random.uniform(key, ())
    i = start_index + jnp.arange(batch_size)
    return jnp.mod(u + i / n, 1.0)


def squared_eps_error(x, eps, gamma, eps_hat_fn):
    """||eps - eps_hat(z; gamma)||^2 per example at z = alpha x + sigma eps, [B]."""
    z = diffusion.q_sample(x, gamma, eps)
    return _sum_except_batch(jnp.square(eps - eps_hat_fn(z, gamma)))


def diffusion_loss(x, eps, t, eps_hat_fn, gamma_fn, num_steps: int = 0, gammas_t=None):
    """Diffusion term of the ELBO, one Monte-Carlo sample per example.

    Continuous time (num_steps = 0):  L_inf = 1/2 gamma'(t) ||eps - eps_hat(z_t; gamma_t)||^2.
    Discrete time (num_steps = T):    t is mapped to ceil(t T) / T (0 -> 1/T), s = t - 1/T,
                                      L_T = T/2 expm1(gamma_t - gamma_s) ||eps - eps_hat(z_t; gamma_t)||^2.

    Args:
      x: data in the network's scale [B, ...] (for images: `scale_data(x_int, V)`).
      eps: N(0, I) noise, x's shape. t: times in [0, 1), [B].
      eps_hat_fn, gamma_fn: see module docstring. num_steps: T, or 0 for continuous time.
      gammas_t: continuous time only: (gamma(t), gamma'(t)), each [B], given instead of
        computed from gamma_fn (see `variance_minimizing_value_and_grad`).
    Returns:
      [B] nats; unbiased for the term's expectation over t ~ U[0, 1), eps.
    """
    return diffusion_loss_and_eps_error(x, eps, t, eps_hat_fn, gamma_fn, num_steps, gammas_t)[0]


def diffusion_loss_and_eps_error(x, eps, t, eps_hat_fn, gamma_fn, num_steps: int = 0, gammas_t=None):
    """(L [B], ||eps - eps_hat||^2 [B]): `diffusion_loss` and the squared error it weights, one network call.

    Any other weighting of the same error (DDPM's L_simple = error / D) reuses the
    network evaluation instead of drawing its own z_t.
    """
    return _diffusion_parts(x, eps, t, eps_hat_fn, gamma_fn, num_steps, gammas_t)[:2]


def _diffusion_parts(x, eps, t, eps_hat_fn, gamma_fn, num_steps: int = 0, gammas_t=None):
    """(L, ||eps - eps_hat||^2, gamma_t, rate), each [B]: L = 1/2 rate ||eps - eps_hat||^2.

    rate = gamma'(t) in continuous time, T expm1(gamma_t - gamma_s) in discrete time.
    """
    t = jnp.asarray(t, jnp.float32)
    if gammas_t is not None and num_steps:
        raise ValueError("gammas_t is for continuous time (num_steps = 0) only")
    if num_steps == 0:
        gamma, dgamma = gamma_and_derivative(gamma_fn, t) if gammas_t is None else gammas_t
        error = squared_eps_error(x, eps, gamma, eps_hat_fn)
        return 0.5 * dgamma * error, error, gamma, dgamma
    T = num_steps
    t = jnp.maximum(jnp.ceil(t * T), 1.0) / T
    gamma_t, gamma_s = gamma_fn(t), gamma_fn(t - 1.0 / T)
    error = squared_eps_error(x, eps, gamma_t, eps_hat_fn)
    rate = T * jnp.expm1(gamma_t - gamma_s)
    return 0.5 * rate * error, error, gamma_t, rate


def weighted_loss_from_error(eps_error, gamma, dgamma, weighting, num_dims: int):
    """L_w = 1/2 w(lambda_t) (-d lambda_t / dt) ||eps - eps_hat||^2 [B] nats, lambda = -gamma, from a computed error.

    eps_error: ||eps - eps_hat(z_t; lambda_t)||^2 [B]; gamma, dgamma: gamma(t), gamma'(t) = -d lambda / dt [B].
    weighting: a `vdm.core.weightings.get_weighting` (or any callable w(lambda)); a schedule-defined one
      (eps_mse) with its own `per_example` computes that number its own way (eps_mse: error / D, the same
      number as 1/2 (2 / D) error).
    """
    entry = getattr(weighting, "entry", None)
    if entry is not None and entry.per_example is not None:
        return entry.per_example(eps_error, num_dims)
    lam = -gamma
    if hasattr(weighting, "loss_weight"):
        factor = weighting.loss_weight(lam, dgamma, num_dims)
    else:
        factor = weighting(lam) * dgamma
    return 0.5 * factor * eps_error


def weighted_diffusion_loss(x, eps, t, eps_hat_fn, gamma_fn, weighting, gammas_t=None):
    """Weighted diffusion loss (continuous time), one Monte-Carlo sample per example, [B] nats.

        L_w = 1/2 w(lambda_t) (-d lambda_t / dt) ||eps - eps_hat(z_t; lambda_t)||^2,  lambda = -gamma

    With w = 1 (`get_weighting('elbo')`) this is `diffusion_loss`. For a weighting of lambda
    alone its expectation over t ~ U[0, 1) depends on the schedule only through gamma(0), gamma(1)
    (`vdm.core.weightings`). Args as `diffusion_loss`; weighting: `vdm.core.weightings.get_weighting(...)`
    or a callable w(lambda).
    """
    _, error, gamma, dgamma = _diffusion_parts(x, eps, t, eps_hat_fn, gamma_fn, 0, gammas_t)
    return weighted_loss_from_error(error, gamma, dgamma, weighting, math.prod(x.shape[1:]))


def training_loss_per_example(terms, weighting, num_dims: int):
    """The per-example training loss of a weighting from `elbo_terms` (one network evaluation), [B].

    elbo: the whole ELBO in bits/dim (`terms['bpd']`: prior and reconstruction included, what trains
    learned endpoints). Any other weighting: its diffusion loss L_w in nats (`weighted_loss_from_error`
    on the diffusion term's own error, gamma and gamma'); eps_mse gives exactly `terms['eps_mse']`,
    DDPM's L_simple as trained before the weightings existed.
    """
    if getattr(weighting, "name", None) == "elbo":
        return terms["bpd"]
    return weighted_loss_from_error(terms["eps_error"], terms["gamma_t"], terms["dgamma_t"], weighting, num_dims)


def simple_loss(x, eps, t, eps_hat_fn, gamma_fn):
    """DDPM's L_simple: mean over dimensions of ||eps - eps_hat(z_t)||^2, [B]. A training objective, not a bound."""
    gamma = gamma_fn(jnp.asarray(t, jnp.float32))
    return squared_eps_error(x, eps, gamma, eps_hat_fn) / math.prod(x.shape[1:])


def prior_kl(x, gamma_1):
    """KL(q(z_1 | x) || N(0, I)) = 1/2 sum_i (alpha_1^2 (x_i^2 - 1) - log sigma_1^2), [B].

    x: data in the network's scale [B, ...]; gamma_1: scalar or [B].
    """
    gamma_1 = diffusion.expand_gamma(gamma_1, x)
    alpha_sq = jax.nn.sigmoid(-gamma_1)
    kl = 0.5 * (alpha_sq * (jnp.square(x) - 1.0) - jax.nn.log_sigmoid(gamma_1))
    return _sum_except_batch(jnp.broadcast_to(kl, x.shape))


def decoder_logits(z_0, gamma_0, vocab_size: int):
    """Unnormalised log p(x_i = k | z_0) = -1/2 SNR_0 (z_{0,i} / alpha_0 - x~_k)^2, [..., V]."""
    gamma_0 = diffusion.expand_gamma(gamma_0, z_0)
    alpha_0 = jnp.sqrt(jax.nn.sigmoid(-gamma_0))
    z_rescaled = (z_0 / alpha_0)[..., None]
    return -0.5 * jnp.exp(-gamma_0)[..., None] * jnp.square(z_rescaled - bin_centers(vocab_size))


def decoder_log_probs(z_0, gamma_0, vocab_size: int):
    """log p(x_i = k | z_0) for every dimension i and value k, [B, ..., V]; per-dimension softmax."""
    return jax.nn.log_softmax(decoder_logits(z_0, gamma_0, vocab_size), axis=-1)


# Windowed decoder: bins farther than `window` from the nearest one are dropped from the normaliser when
# their total weight is below float32 resolution: 1/2 SNR_0 Delta^2 window (window + 1) > _WINDOW_NATS.
_WINDOW_NATS = 25.0


def reconstruction_loss(x_int, z_0, gamma_0, vocab_size: int, window: int = 0):
    """-log p(x | z_0) = -sum_i log p(x_i | z_0), [B]; any number of channels.

    x_int: integer data [B, ...]; z_0: a draw from q(z_0 | x), x_int's shape.
    window: 0 normalises over all V bins. W > 0 normalises over the 2W + 1 bins
      around the one nearest z_0 / alpha_0 instead, which is the same number in
      float32 whenever every other bin has a logit lower by more than 25 nats
      (1/2 SNR_0 Delta^2 W (W + 1) > 25, Delta = 2 / V the bin width; at
      gamma_0 = -13.3, V = 256 already W = 1). When that fails for the batch's
      largest gamma_0, the full normaliser is computed instead (`lax.cond`).
    """
    x_int = jnp.asarray(x_int, jnp.int32)

    def full(_=None):
        log_probs = decoder_log_probs(z_0, gamma_0, vocab_size)
        return -_sum_except_batch(jnp.take_along_axis(log_probs, x_int[..., None], axis=-1)[..., 0])

    if window <= 0 or 2 * window + 1 >= vocab_size:
        return full()
    gamma_0 = diffusion.expand_gamma(gamma_0, z_0)
    snr = jnp.exp(-gamma_0)
    u = z_0 / jnp.sqrt(jax.nn.sigmoid(-gamma_0))

    def windowed(_):
        nearest = jnp.clip(jnp.round((u + 1.0) * vocab_size / 2 - 0.5), 0, vocab_size - 1)
        start = jnp.clip(nearest - window, 0, vocab_size - 2 * window - 1)
        bins = start[..., None] + jnp.arange(2 * window + 1, dtype=jnp.float32)
        logits = -0.5 * snr[..., None] * jnp.square(u[..., None] - (2.0 * (bins + 0.5) / vocab_size - 1.0))
        offset = x_int - start.astype(jnp.int32)
        inside = (offset >= 0) & (offset <= 2 * window)
        in_window = jnp.take_along_axis(logits, jnp.clip(offset, 0, 2 * window)[..., None], axis=-1)[..., 0]
        logit_x = jnp.where(inside, in_window, -0.5 * snr * jnp.square(u - scale_data(x_int, vocab_size)))
        return -_sum_except_batch(logit_x - jax.nn.logsumexp(logits, axis=-1))

    delta = 2.0 / vocab_size
    exact = 0.5 * jnp.exp(-jnp.max(gamma_0)) * delta**2 * window * (window + 1) > _WINDOW_NATS
    return jax.lax.cond(exact, windowed, full, None)


def bits_per_dim(nats, num_dims: int):
    """nats / (D ln 2)."""
    return nats / (num_dims * math.log(2.0))


def elbo_noise(key, shape, t=None) -> dict:
    """The random draws of one ELBO estimate, for data of `shape` [B, ...].

    Returns {'t': [B] low-discrepancy times (or the given t), 'eps_0': z_0's noise,
    'eps': z_t's noise (both N(0, I), `shape`)}. `elbo_terms` takes these (or a key,
    which it turns into these), so a caller that needs the times itself (the
    variance-minimising schedule) draws once and passes the same draws on.
    """
    key_t, key_0, key_eps = jax.random.split(key, 3)
    t = low_discrepancy_times(key_t, shape[0]) if t is None else jnp.asarray(t, jnp.float32)
    return {"t": t, "eps_0": jax.random.normal(key_0, shape), "eps": jax.random.normal(key_eps, shape)}


def elbo_terms(x_int, noise, eps_hat_fn, gamma_fn, vocab_size: int, num_steps: int = 0, gammas_t=None,
               decoder_window: int = 0):
    """All three ELBO terms and the total, per example, in nats and bits/dim, from one network evaluation.

    Args:
      x_int: integer data [B, ...] in {0..V-1}.
      noise: the draws of `elbo_noise` ({'t', 'eps_0', 'eps'}), or a PRNG key to draw them from.
      eps_hat_fn, gamma_fn: see module docstring. num_steps: T, or 0 for continuous time.
      gammas_t: optional (gamma(t), gamma'(t)) [B] each, see `diffusion_loss`.
      decoder_window: see `reconstruction_loss` (0: every bin).
    Returns:
      dict of [B] arrays: 'prior', 'reconstruction', 'diffusion', 'total' (nats),
      'bpd', 'bpd_prior', 'bpd_reconstruction', 'bpd_diffusion' (bits per dimension) and
      'eps_mse', mean_i (eps - eps_hat)_i^2 at the diffusion term's draw (L_simple):
      any weighting of the epsilon error reuses this evaluation; 'eps_error' (||eps - eps_hat||^2),
      'gamma_t' and 'dgamma_t' (gamma'(t); in discrete time T expm1(gamma_t - gamma_s)) at that draw,
      from which `training_loss_per_example` computes any weighting's loss.
    """
    x = scale_data(x_int, vocab_size)
    batch, num_dims = x.shape[0], math.prod(x.shape[1:])
    if not isinstance(noise, dict):
        noise = elbo_noise(noise, x.shape)
    gamma_01 = gamma_fn(jnp.array([0.0, 1.0]))
    gamma_0 = jnp.broadcast_to(gamma_01[0], (batch,))
    gamma_1 = jnp.broadcast_to(gamma_01[1], (batch,))
    z_0 = diffusion.q_sample(x, gamma_0, noise["eps_0"])
    diffusion_term, eps_error, gamma_t, rate = _diffusion_parts(
        x, noise["eps"], noise["t"], eps_hat_fn, gamma_fn, num_steps, gammas_t=gammas_t)
    terms = {
        "prior": prior_kl(x, gamma_1),
        "reconstruction": reconstruction_loss(x_int, z_0, gamma_0, vocab_size, decoder_window),
        "diffusion": diffusion_term,
        "eps_mse": eps_error / num_dims,  # DDPM's L_simple at the diffusion term's (t, eps): the same network call
        "eps_error": eps_error,  # what any weighting of the diffusion loss weights (`weighted_loss_from_error`)
        "gamma_t": gamma_t,
        "dgamma_t": rate,
    }
    return with_totals(terms, num_dims)


def with_totals(terms: dict, num_dims: int) -> dict:
    """Adds 'total' = prior + reconstruction + diffusion (nats) and 'bpd', 'bpd_<term>' (bits/dim) to `terms`."""
    terms = {**terms, "total": terms["prior"] + terms["reconstruction"] + terms["diffusion"]}
    for name in ("prior", "reconstruction", "diffusion"):
        terms["bpd_" + name] = bits_per_dim(terms[name], num_dims)
    terms["bpd"] = bits_per_dim(terms["total"], num_dims)
    return terms


def variance_minimizing_value_and_grad(per_example_fn, schedule_fn, params, t, pin_endpoints: bool = False):
    """The objective's gradients for everything but the schedule's interior, which gets d/d eta mean(L_i^2).

    The paper's variance-minimising schedule (appendix): with the endpoints
    gamma_0, gamma_1 fixed, E[L_inf] does not depend on the interior shape eta of
    the schedule, so grad_eta E[L^2] = grad_eta Var[L]. L_i depends on eta only
    through (gamma(t_i), gamma'(t_i)); one backward pass through the network gives
    their cotangents c_i, c'_i for the mean loss, and

        d/d eta mean_i L_i^2 = sum_i 2 L_i (c_i d gamma(t_i)/d eta + c'_i d gamma'(t_i)/d eta),

    i.e. the same cotangents scaled by 2 L_i, pulled back through the schedule
    alone (cheap). The network and the endpoints take the unscaled cotangents:
    the plain gradient of the mean loss.

    The same holds for any weighted diffusion loss L_w whose weighting is a function of
    lambda = -gamma alone (`vdm.core.weightings`): its expectation depends on the schedule only
    through the endpoints, and the schedule only importance-samples lambda (t ~ U(0, 1) gives
    lambda the density 1 / gamma'(t)). Minimising E[L_w^2] over eta drives that density towards the
    variance-optimal proposal p(lambda) ~ sqrt(E[(w(lambda) ||eps - eps_hat||^2)^2 | lambda]): an
    adaptive noise schedule that follows the network's current errors (Kingma & Gao 2023 track
    E[w ||eps - eps_hat||^2] with a histogram instead; this is that idea with the variance-optimal
    target, on the machinery above). L_w has no prior or reconstruction term to set gamma_0 and
    gamma_1, so there `pin_endpoints=True` keeps them where they are (zero gradient).

    Args:
      per_example_fn(params, gammas_t) -> (loss [B], diffusion [B], aux): the
        per-example objective and its diffusion term, in the same units (nats or
        bits/dim), with gammas_t = (gamma(t), gamma'(t)) [B] each. It may read
        params["schedule"] for gamma(0) and gamma(1) only.
      schedule_fn(schedule_params, t [B]) -> gamma [B], strictly increasing.
      params: {"net": ..., "schedule": {"endpoints": ..., "interior": ...}}.
      t: times [B].
      pin_endpoints: give the endpoints a zero gradient (a weighted loss L_w) instead of the loss's.
    Returns:
      ((mean loss, aux), grads) with grads shaped like params, and
      grads["schedule"]["interior"] = d/d eta mean(diffusion_i^2) in squared units.
    """
    t = jnp.asarray(t, jnp.float32)

    def gammas(schedule_params):
        return gamma_and_derivative(lambda u: schedule_fn(schedule_params, u), t)

    gammas_t, gammas_vjp = jax.vjp(gammas, params["schedule"])

    def loss_and_diffusion(p, g):
        loss, diff, aux = per_example_fn(p, g)
        return (loss, diff), aux

    (loss, diff), loss_vjp, aux = jax.vjp(loss_and_diffusion, params, gammas_t, has_aux=True)
    seed = jnp.full_like(loss, 1.0 / loss.shape[0])
    grads, (c_gamma, c_dgamma) = loss_vjp((seed, jnp.zeros_like(diff)))
    (elbo_schedule,) = gammas_vjp((c_gamma, c_dgamma))
    (variance_schedule,) = gammas_vjp((2.0 * diff * c_gamma, 2.0 * diff * c_dgamma))
    endpoints = jax.tree.map(jnp.add, grads["schedule"]["endpoints"], elbo_schedule["endpoints"])
    schedule_grads = {
        "endpoints": jax.tree.map(jnp.zeros_like, endpoints) if pin_endpoints else endpoints,
        "interior": variance_schedule["interior"],
    }
    return (jnp.mean(loss), aux), {**grads, "schedule": schedule_grads}
