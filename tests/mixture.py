"""A Gaussian mixture whose diffused marginals, score and optimal denoiser are known in closed form.

x ~ Σ_k π_k N(μ_k, Σ_k) in R^d. Under the VDM forward process z_t = α_t x + σ_t ε,

    q(z_t) = Σ_k π_k N(z_t; α_t μ_k, C_k),  C_k = α_t² Σ_k + σ_t² I,
    ∇ log q(z_t) = −Σ_k w_k(z_t) C_k⁻¹ (z_t − α_t μ_k),  w_k = posterior responsibilities,

and the optimal denoiser is ε̂(z_t) = E[ε | z_t] = −σ_t ∇ log q(z_t). This is the
ground truth the samplers and the likelihood are tested against.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    weights: np.ndarray  # [K], sums to 1
    means: np.ndarray  # [K, d]
    covs: np.ndarray  # [K, d, d], positive definite

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, key, n: int):
        """n points [n, d] from the mixture (t = 0, no diffusion noise)."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, len(self.weights), (n,), p=jnp.asarray(self.weights))
        chol = jnp.linalg.cholesky(jnp.asarray(self.covs))[comp]
        noise = jax.random.normal(k_noise, (n, self.dim))
        return jnp.asarray(self.means)[comp] + jnp.einsum("nij,nj->ni", chol, noise)

    def _components(self, gamma):
        """alpha, sigma scalars and per-component means [K, d], covariances [K, d, d] at log-SNR -gamma."""
        alpha, sigma = jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))
        means = alpha * jnp.asarray(self.means)
        covs = alpha**2 * jnp.asarray(self.covs) + sigma**2 * jnp.eye(self.dim)
        return alpha, sigma, means, covs

    def _log_joint_one(self, z, gamma):
        """log π_k + log N(z; α μ_k, C_k) for each component k: [K]."""
        _, _, means, covs = self._components(gamma)
        diff = z - means  # [K, d]
        sol = jnp.linalg.solve(covs, diff[..., None])[..., 0]
        _, logdet = jnp.linalg.slogdet(covs)
        log_comp = -0.5 * (jnp.sum(diff * sol, -1) + logdet + self.dim * jnp.log(2 * jnp.pi))
        return log_comp + jnp.log(jnp.asarray(self.weights))

    def _log_prob_one(self, z, gamma):
        return jax.nn.logsumexp(self._log_joint_one(z, gamma))

    def log_posterior(self, z, gamma):
        """log p(k | z_t) [B, K]: the exact noise-conditional classifier when labels are components."""
        gamma = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), z.shape[:1])
        return jax.nn.log_softmax(jax.vmap(self._log_joint_one)(z, gamma), -1)

    def conditional(self, k: int) -> "GaussianMixture":
        """The mixture restricted to component k (x | y = k)."""
        return GaussianMixture(np.ones(1), self.means[k : k + 1], self.covs[k : k + 1])

    def log_prob(self, z, gamma):
        """log q(z_t) [B] for z [B, d] and a scalar gamma or gamma [B]."""
        gamma = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), z.shape[:1])
        return jax.vmap(self._log_prob_one)(z, gamma)

    def score(self, z, gamma):
        """∇_z log q(z_t) [B, d]."""
        gamma = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), z.shape[:1])
        return jax.vmap(jax.grad(self._log_prob_one))(z, gamma)

    def eps_hat(self, z, gamma):
        """The optimal denoiser E[ε | z_t] = −σ_t ∇ log q(z_t), [B, d]."""
        gamma = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), z.shape[:1])
        return -jnp.sqrt(jax.nn.sigmoid(gamma))[:, None] * self.score(z, gamma)


def three_blobs() -> GaussianMixture:
    """The 2-D test mixture: three unequal, correlated components around the origin."""
    return GaussianMixture(
        weights=np.array([0.5, 0.3, 0.2]),
        means=np.array([[-1.0, -0.3], [1.0, 0.6], [0.2, -1.2]]),
        covs=np.array([
            [[0.10, 0.04], [0.04, 0.05]],
            [[0.04, -0.01], [-0.01, 0.09]],
            [[0.03, 0.0], [0.0, 0.03]],
        ]),
    )


def energy_distance(x, y) -> float:
    """Energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| between samples x [n, d] and y [m, d] (V-statistic)."""
    x, y = jnp.asarray(x), jnp.asarray(y)

    def mean_dist(a, b):
        return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(a[:, None] - b[None]), -1) + 1e-12))

    return float(2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y))
