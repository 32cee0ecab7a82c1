"""Thin glue: score network + schedule + discretised decoder -> the ELBO of `vdm.core.losses`.

Parameters are one pytree ``{"net": ..., "schedule": ...}``; the schedule's own
tree is ``{"endpoints": ..., "interior": ...}`` for learned schedules (empty for
fixed ones), so a caller can route different gradients to each group.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from vdm.config import validation
from vdm.config.migrations import network_version_problem
from vdm.core import diffusion, elbo_estimator, losses, schedules, weightings
from vdm.nets import ScoreUNet, make_ops
from vdm.nets import latent as latent_nets
from vdm.sampling import guidance


TERM_NAMES = ("bpd", "bpd_prior", "bpd_reconstruction", "bpd_diffusion")  # the ELBO's terms in bits/dim


def noise_level(gamma):
    """The network's conditioning for gamma [B] or [B, ...]: gamma itself, or its mean over the dimensions for a
    schedule of one gamma per dimension (MuLAN's choice: the network sees one noise level; the parameterisation
    eps_from_prediction still uses gamma per dimension)."""
    gamma = jnp.asarray(gamma)
    return gamma if gamma.ndim <= 1 else jnp.mean(gamma.reshape(gamma.shape[0], -1), axis=-1)


@dataclasses.dataclass(frozen=True)
class VDM:
    """A VDM built from a config (see vdm/config/schema.py)."""

    net: ScoreUNet
    schedule: object
    image_shape: tuple
    vocab_size: int
    num_classes: int
    prediction: str = "eps"
    num_steps: int = 0
    weighting: str = "elbo"  # loss.weighting, a key of vdm.core.weightings.WEIGHTINGS
    weighting_params: tuple = ()  # ((name, value), ...): its loss.weighting_<name> keys
    interior_objective: str = "elbo"
    decoder_window: int = 0
    class_conditional: bool = False
    label_dropout: float = 0.0
    latent: str = "none"  # schedule.latent: MuLAN's auxiliary latent c ~ q(c | x) (`vdm.nets.latent`)
    latent_dim: int = 0
    latent_k: int = 0  # schedule.latent_k: the top-k latent's slots on

    @classmethod
    def from_config(cls, config) -> "VDM":
        m, s = config.model, config.schedule
        image_shape = tuple(config.data.image_shape)
        num_classes = config.data.num_classes if m.class_conditional else 0
        net = ScoreUNet(
            channels=m.channels,
            num_blocks=m.num_blocks,
            out_channels=image_shape[-1],
            gamma_min=s.gamma_min,
            gamma_max=s.gamma_max,
            dropout=m.dropout,
            attention_per_block=m.attention_per_block,
            fourier=(m.fourier_start, m.fourier_stop, m.fourier_step, m.fourier_scale) if m.fourier_features else None,
            cond_dim=m.cond_dim + (s.latent_dim if s.latent != "none" else 0),  # the latent joins the conditioning
            num_classes=num_classes,
            input_skip=m.input_skip and m.prediction == "eps",
            norm_groups=m.norm_groups,
            scan_blocks=m.scan_blocks,
            recompute=m.recompute,
            ops=make_ops(m.impl, m.dtype, scanned=m.scan_blocks),
        )
        kwargs = {"width": s.width} if s.name == "monotone_net" else {"shape": image_shape} if s.name == "mulan" else {}
        return cls(
            net=net,
            schedule=schedules.make_schedule(s.name, s.gamma_min, s.gamma_max, **kwargs),
            image_shape=image_shape,
            vocab_size=config.data.vocab_size,
            num_classes=num_classes,
            prediction=m.prediction,
            num_steps=config.loss.num_steps,
            weighting=config.loss.weighting,
            weighting_params=tuple(sorted(weightings.from_loss_config(config.loss).params.items())),
            interior_objective=s.interior_objective,
            decoder_window=config.loss.decoder_window,
            class_conditional=m.class_conditional,
            label_dropout=m.label_dropout,
            latent=s.latent,
            latent_dim=s.latent_dim if s.latent != "none" else 0,
            latent_k=s.latent_k if s.latent == "topk" else 0,
        )

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    def network_version_problem(self, stored: int) -> str | None:
        """Why parameters of network version `stored` would compute something else here; None if they would not."""
        return network_version_problem(stored, self.net.channels, self.net.norm_groups)

    def init(self, key):
        """Parameters {"net", "schedule"} for a batch of one image, as one compiled program (flax's init outside
        jit compiles every layer's operations one by one: ~3x longer for the tiny test network)."""
        return self._compiled_init(key)

    @functools.cached_property
    def _compiled_init(self):
        def init(key):
            k_net, k_sched = jax.random.split(key)
            z = jnp.zeros((1, *self.image_shape), jnp.float32)
            net_params = self.net.init({"params": k_net}, z, jnp.zeros((1,)))["params"]
            schedule = self.schedule.init(k_sched)
            if self.latent_dim:  # MuLAN's encoder and head train with the schedule's shape
                k_enc, k_head = jax.random.split(jax.random.fold_in(k_sched, 1))
                schedule["interior"] = {
                    **schedule["interior"],
                    "encoder": self._encoder.init(k_enc, z)["params"],
                    "head": self._head.init(k_head, jnp.zeros((1, self.latent_dim)))["params"]}
            return {"net": net_params, "schedule": schedule}

        return jax.jit(init)

    @functools.cached_property
    def _latent(self):
        return latent_nets.make_latent(self.latent, self.latent_dim, self.latent_k)

    @functools.cached_property
    def _encoder(self):
        return latent_nets.LatentEncoder(self._latent.encoder_outputs)

    @functools.cached_property
    def _head(self):
        return latent_nets.ScheduleHead(self.image_shape)

    def latent_noise(self, key, batch_size: int):
        """The latent's noise [B, d] for a key (normal for 'gaussian', Gumbel for 'topk'): its own stream, so the
        other draws stay those of a model without the latent."""
        return self._latent.noise(jax.random.fold_in(key, 3), (batch_size, self.latent_dim))

    def draw_latent(self, params, x_int, noise):
        """(c [B, d], KL(q(c | x) || p(c)) [B] nats) for the latent's noise [B, d] (`vdm.nets.latent`)."""
        x = losses.scale_data(x_int, self.vocab_size)
        encoded = self._encoder.apply({"params": params["schedule"]["interior"]["encoder"]}, x)
        return self._latent.posterior(encoded, noise)

    def prior_latent(self, key, batch_size: int):
        """c [B, d] ~ p(c), for generation."""
        return self._latent.prior(self.latent_noise(key, batch_size))

    def gamma_fn(self, params, latent=None):
        """t [B] -> gamma [B] (or [B, ...] per dimension) for these parameters. With MuLAN's latent, latent [B, d]
        gives each example its own schedule (t must then be [B]); None: the schedule of the prior's mean latent E_p[c]
        for any batch."""
        if not self.latent_dim:
            return functools.partial(self.schedule, params["schedule"])

        def offsets_of(c):
            return self._head.apply({"params": params["schedule"]["interior"]["head"]}, c)

        if latent is not None:  # computed once, not at every evaluation of gamma (samplers call it every step)
            offsets = offsets_of(latent)
            return lambda t: self.schedule(params["schedule"], t, offsets)
        return lambda t: self.schedule(params["schedule"], t, offsets_of(self._latent.prior_mean(jnp.shape(t)[0])))

    def eps_hat_fn(self, params, labels=None, cond=None, dropout_key=None, latent=None):
        """(z [B, ...], gamma [B]) -> eps_hat [B, ...] float32. Dropout is on iff a dropout_key is given.
        latent [B, d]: MuLAN's c, appended to the network's conditioning (E_p[c] if None)."""

        def eps_hat(z, gamma):
            rngs = {} if dropout_key is None else {"dropout": dropout_key}
            conditioning = cond
            if self.latent_dim:
                b = z.shape[0]
                c = self._latent.prior_mean(b) if latent is None else latent
                base = jnp.zeros((b, self.net.cond_dim - self.latent_dim)) if cond is None else cond
                conditioning = jnp.concatenate([base.astype(jnp.float32), c], axis=-1)
            out = self.net.apply(
                {"params": params["net"]}, z, noise_level(gamma), conditioning, labels,
                deterministic=dropout_key is None, rngs=rngs,
            )
            return diffusion.eps_from_prediction(out, z, gamma, self.prediction)

        return eps_hat

    def guided_eps_hat_fn(self, params, labels, weight: float, latent=None):
        """Classifier-free guided denoiser (1 + w) eps_hat(z, y) - w eps_hat(z, null) for labels [B].

        One network call on a doubled batch (`vdm.sampling.guidance.classifier_free_eps_hat_fn`).
        Needs a class-conditional model; w = 0 is the plain conditional denoiser.
        """
        if not self.class_conditional:
            raise ValueError("classifier-free guidance needs a class-conditional model (model.class_conditional=True)")
        doubled = None if latent is None else jnp.concatenate([latent, latent])  # the doubled batch's latents
        return guidance.classifier_free_eps_hat_fn(
            lambda y: self.eps_hat_fn(params, labels=y, latent=doubled if y.shape[0] != labels.shape[0] else latent),
            labels, self.num_classes, weight)

    def _labels(self, batch, key, train):
        if not self.class_conditional:
            return None
        labels = jnp.asarray(batch["labels"], jnp.int32)
        if train and self.label_dropout > 0:
            drop = jax.random.bernoulli(key, self.label_dropout, labels.shape)
            labels = jnp.where(drop, self.num_classes, labels)
        return labels

    @staticmethod
    def _split(key):
        """A step's key -> (ELBO draws, dropout, label dropout) keys."""
        return jax.random.split(key, 3)

    def elbo_terms(self, params, batch, key, train=False, noise=None, gammas_t=None):
        """Per-example ELBO terms and the training loss (bits/dim) of the run's weighting, one network call
        (`vdm.core.losses.elbo_terms`).

        key: dropout and label-dropout randomness (train=True) and, unless `noise` is
        given, the ELBO's draws (`vdm.core.losses.elbo_noise`).
        """
        k_elbo, k_drop, k_label = self._split(key)
        latent, latent_kl = None, None
        if self.latent_dim:  # its own stream: the other draws stay those of a model without the latent
            latent, latent_kl = self.draw_latent(params, batch["images"], self.latent_noise(key, batch["images"].shape[0]))
        eps_hat_fn = self.eps_hat_fn(
            params, self._labels(batch, k_label, train), batch.get("cond"), k_drop if train else None, latent
        )
        noise = losses.elbo_noise(k_elbo, batch["images"].shape) if noise is None else noise
        return losses.elbo_terms(
            batch["images"], noise, eps_hat_fn, self.gamma_fn(params, latent), self.vocab_size, self.num_steps,
            weighting=self.loss_weighting(), gammas_t=gammas_t, decoder_window=self.decoder_window, latent_kl=latent_kl,
        )

    def elbo_estimate(self, params, batch, keys, estimator: elbo_estimator.ElboEstimator):
        """Per-example ELBO terms for evaluation (no dropout), each example from its own key [B]: one repeat of
        `estimator` (`vdm.core.elbo_estimator.elbo_estimate`)."""
        latent, latent_kl = None, None
        if self.latent_dim:  # each example's c from its own key
            noise = jax.vmap(lambda k: self.latent_noise(k, 1)[0])(keys)
            latent, latent_kl = self.draw_latent(params, batch["images"], noise)
        eps_hat_fn = self.eps_hat_fn(params, self._labels(batch, None, False), batch.get("cond"), latent=latent)
        return elbo_estimator.elbo_estimate(
            batch["images"], keys, eps_hat_fn, self.gamma_fn(params, latent), self.vocab_size, self.num_steps,
            estimator.points, estimator.density, self.decoder_window, latent_kl=latent_kl,
        )

    @property
    def term_names(self) -> tuple:
        """The per-example terms in bits/dim that evaluation and the train metrics report."""
        return TERM_NAMES + (("bpd_latent",) if self.latent_dim else ())

    def loss_and_grads(self, params, batch, key):
        """((scalar loss, per-example terms), grads) of `training_loss`.

        With interior_objective = 'variance' (monotone_net, continuous time) the schedule's
        interior parameters get d/d eta mean(L_i^2) of the diffusion part of the per-example
        training loss instead (`vdm.core.losses.variance_minimizing_value_and_grad`): for w = 1 the
        paper's variance-minimising schedule; for any other weighting of lambda alone an adaptive
        importance sampler of lambda, with the endpoints pinned (L_w does not depend on the interior in
        expectation and has nothing to set the endpoints). The network (and, for w = 1, the endpoints)
        get the plain gradient of the mean loss.
        """
        if self.interior_objective == "elbo":
            return jax.value_and_grad(self.training_loss, has_aux=True)(params, batch, key)
        noise = losses.elbo_noise(self._split(key)[0], batch["images"].shape)  # drawn once, passed on

        def per_example(p, gammas_t):
            terms = self.elbo_terms(p, batch, key, train=True, noise=noise, gammas_t=gammas_t)
            return terms["loss"], terms["loss_diffusion"], terms

        return losses.variance_minimizing_value_and_grad(per_example, self.schedule, params, noise["t"],
                                                         pin_endpoints=self.pin_schedule_endpoints)

    @property
    def pin_schedule_endpoints(self) -> bool:
        """The variance objective under a weighting other than w = 1 keeps a learned schedule's endpoints fixed."""
        return not validation.weighting_trains_schedule_endpoints(self.weighting)

    def loss_weighting(self):
        """The training loss's weighting w(lambda) (`vdm.core.weightings.get_weighting`)."""
        return weightings.get_weighting(self.weighting, **dict(self.weighting_params))

    def training_loss(self, params, batch, key):
        """(scalar loss, per-example terms): the mean over the batch of terms['loss'], the weighting's training
        loss in bits/dim, (prior + reconstruction + L_w) / (D ln 2) (`vdm.core.losses.elbo_terms`)."""
        terms = self.elbo_terms(params, batch, key, train=True)
        return jnp.mean(terms["loss"]), terms
