"""ELBO terms of a VDM as pure functions of arrays and callables.

Data are integers x in {0, ..., V-1}^D, mapped to x~ = 2 (x + 1/2) / V - 1 in
(-1, 1). With z_t ~ q(z_t | x) and a denoiser eps_hat_fn(z_t, gamma_t):

    -log p(x) <= prior + reconstruction + diffusion        (nats per example)
    prior          = KL(q(z_1 | x) || N(0, I))
    reconstruction = -E_{q(z_0|x)} log p(x | z_0)            (discretised decoder)
    diffusion      = L_T (num_steps = T) or L_inf (num_steps = 0)

Callables:
    eps_hat_fn(z [B, ...], gamma) -> eps_hat [B, ...]
    gamma_fn(t [B]) -> gamma          (strictly increasing in t; gamma [B], one noise level per example,
                                      or [B, ...] of the data's shape, one per dimension)

The diffusion term is `vdm.core.objective.diffusion_loss`; `elbo_terms` adds the prior and the
reconstruction and gives the training loss of any weighting.

Every function returns per-example values ``[B]`` in nats unless named otherwise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vdm.core import diffusion, objective, schedules
from vdm.core.schedules import gamma_and_derivative

__all__ = [
    "scale_data",
    "bin_centers",
    "low_discrepancy_times",
    "prior_kl",
    "decoder_logits",
    "decoder_log_probs",
    "reconstruction_loss",
    "elbo_noise",
    "elbo_terms",
    "endpoint_gammas",
    "with_totals",
    "to_bits_per_dim",
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


def prior_kl(x, gamma_1):
    """KL(q(z_1 | x) || N(0, I)) = 1/2 sum_i (alpha_1^2 (x_i^2 - 1) - log sigma_1^2), [B].

    x: data in the network's scale [B, ...]; gamma_1: scalar, [B] or x's shape.
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


def to_bits_per_dim(nats, num_dims: int):
    """nats / (D ln 2): a per-example number of nats as bits per dimension."""
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


def elbo_terms(x_int, noise, eps_hat_fn, gamma_fn, vocab_size: int, num_steps: int = 0,
               weighting=objective.ELBO_WEIGHTING, gammas_t=None, decoder_window: int = 0, latent_kl=None):
    """The ELBO's three terms, their total and the training loss of `weighting`, per example, from one network call.

    The training loss of every weighting, in bits per dimension (`terms['loss']`):

        (prior + reconstruction + L_w) / (D ln 2)

    is the ELBO itself for w = 1. Under another weighting, prior and reconstruction do not depend on the
    network (a learned schedule's endpoints train under w = 1 alone), so they only shift the reported number.

    Args:
      x_int: integer data [B, ...] in {0..V-1}.
      noise: the draws of `elbo_noise` ({'t', 'eps_0', 'eps'}), or a PRNG key to draw them from.
      eps_hat_fn, gamma_fn: see module docstring. num_steps: T, or 0 for continuous time.
      weighting: a `vdm.core.weightings.get_weighting(...)` (default w = 1).
      gammas_t: optional (gamma_t, rate_t) at noise['t'] given instead of computed
        (`vdm.core.objective.gamma_and_rate`; see `variance_minimizing_value_and_grad`).
      decoder_window: see `reconstruction_loss` (0: every bin).
      latent_kl: KL(q(c | x) || p(c)) [B] of an auxiliary latent the schedule depends on (MuLAN), a fourth term.
    Returns:
      dict of [B] arrays: 'prior', 'reconstruction', 'diffusion' (and 'latent'), 'total' (nats), 'bpd',
      'bpd_<term>' (bits/dim), 'loss' (the training loss above, the latent term included) and
      'loss_diffusion' (its diffusion part L_w, bits/dim).
    """
    x = scale_data(x_int, vocab_size)
    num_dims = math.prod(x.shape[1:])
    if not isinstance(noise, dict):
        noise = elbo_noise(noise, x.shape)
    gamma_0, gamma_1 = endpoint_gammas(gamma_fn, x.shape[0])
    z_0 = diffusion.q_sample(x, gamma_0, noise["eps_0"])
    if gammas_t is not None and num_steps:
        raise ValueError("gammas_t is (gamma(t), gamma'(t)) of continuous time: num_steps must be 0")
    gamma_t, rate_t = objective.gamma_and_rate(gamma_fn, noise["t"], num_steps) if gammas_t is None else gammas_t
    weighted, diffusion_term = objective.diffusion_loss(x, noise["eps"], gamma_t, rate_t, eps_hat_fn, weighting)
    terms = with_totals({
        "prior": prior_kl(x, gamma_1),
        "reconstruction": reconstruction_loss(x_int, z_0, gamma_0, vocab_size, decoder_window),
        "diffusion": diffusion_term,
        **({} if latent_kl is None else {"latent": latent_kl}),
    }, num_dims)
    others = terms["prior"] + terms["reconstruction"]
    if latent_kl is not None:
        others = others + latent_kl
    terms["loss"] = to_bits_per_dim(others + weighted, num_dims)
    terms["loss_diffusion"] = to_bits_per_dim(weighted, num_dims)
    return terms


def endpoint_gammas(gamma_fn, batch: int):
    """(gamma(0), gamma(1)) for a batch: each [B] for a schedule of one number per example, gamma_fn's [B, ...] if
    it has one per dimension."""
    if schedules.one_gamma_per_example(gamma_fn, batch):
        gamma_01 = gamma_fn(jnp.array([0.0, 1.0]))
        return jnp.broadcast_to(gamma_01[0], (batch,)), jnp.broadcast_to(gamma_01[1], (batch,))
    return gamma_fn(jnp.zeros((batch,))), gamma_fn(jnp.ones((batch,)))


def with_totals(terms: dict, num_dims: int) -> dict:
    """Adds 'total' = prior + reconstruction + diffusion (+ latent, if there) in nats and 'bpd', 'bpd_<term>'
    (bits/dim) to `terms`."""
    total = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    terms = {**terms, "total": total if "latent" not in terms else total + terms["latent"]}
    for name in ("prior", "reconstruction", "diffusion", "latent")[: 4 if "latent" in terms else 3]:
        terms["bpd_" + name] = to_bits_per_dim(terms[name], num_dims)
    terms["bpd"] = to_bits_per_dim(terms["total"], num_dims)
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
        bits/dim), with gammas_t = (gamma(t), gamma'(t)), each [B] or [B, ...]. It may read
        params["schedule"] for gamma(0) and gamma(1) only.
      schedule_fn(schedule_params, t [B]) -> gamma [B] or [B, ...], strictly increasing.
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
    scale = diffusion.expand_gamma(2.0 * diff, c_gamma)  # [B] against gamma's shape ([B] or [B, ...])
    (variance_schedule,) = gammas_vjp((scale * c_gamma, scale * c_dgamma))
    endpoints = jax.tree.map(jnp.add, grads["schedule"]["endpoints"], elbo_schedule["endpoints"])
    schedule_grads = {
        "endpoints": jax.tree.map(jnp.zeros_like, endpoints) if pin_endpoints else endpoints,
        "interior": variance_schedule["interior"],
    }
    return (jnp.mean(loss), aux), {**grads, "schedule": schedule_grads}
