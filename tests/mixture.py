"""A Gaussian mixture whose diffused marginals, score and optimal denoiser are known in closed form.

x ~ Σ_k π_k N(μ_k, Σ_k) in R^d. Under the VDM forward process z_t = α_t x + σ_t ε,

    q(z_t) = Σ_k π_k N(z_t; α_t μ_k, C_k),  C_k = α_t² Σ_k + σ_t² I,
    ∇ log q(z_t) = −Σ_k w_k(z_t) C_k⁻¹ (z_t − α_t μ_k),  w_k = posterior responsibilities,

and the optimal denoiser is ε̂(z_t) = E[ε | z_t] = −σ_t ∇ log q(z_t). This is the
ground truth the samplers and the likelihood are tested against.

With Σ_k = U_k diag(λ_k) U_kᵀ (eigendecomposed once), C_k = U_k diag(α_t² λ_k + σ_t²) U_kᵀ:
its inverse and log-determinant are elementwise in that basis, so densities and scores
need no matrix solve per point.

With one γ per dimension (gamma [B, d]: α, σ vectors), C_k = diag(α) Σ_k diag(α) + diag(σ²),
factored per point (Cholesky), and ε̂ = −σ ⊙ ∇ log q(z_t).
"""

from __future__ import annotations

import dataclasses
import functools

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
        chol = jnp.asarray(np.linalg.cholesky(self.covs))[comp]
        noise = jax.random.normal(k_noise, (n, self.dim))
        return jnp.asarray(self.means)[comp] + jnp.einsum("nij,nj->ni", chol, noise)

    @functools.cached_property
    def _eigh(self):
        """Eigenvalues λ [K, d] and eigenvectors U [K, d, d] (columns) of the covariances Σ_k."""
        lam, u = np.linalg.eigh(self.covs)
        return lam.astype(np.float32), u.astype(np.float32)  # numpy: a cached jax array could be a tracer

    def _in_eigenbasis(self, z, gamma):
        """U_kᵀ (z − α μ_k) [B, K, d] and the variances α² λ_k + σ² of C_k along U_k [B, K, d]; gamma [B]."""
        lam, u = self._eigh
        alpha2, sigma2 = jax.nn.sigmoid(-gamma)[:, None, None], jax.nn.sigmoid(gamma)[:, None, None]
        diff = z[:, None, :] - jnp.sqrt(alpha2) * jnp.asarray(self.means, jnp.float32)[None]
        return jnp.einsum("bkd,kde->bke", diff, u), alpha2 * lam[None] + sigma2

    def _per_dimension(self, z, gamma):
        """gamma [B, d]: z − α ⊙ μ_k and C_k⁻¹ (z − α ⊙ μ_k) [B, K, d], log det C_k [B, K]."""
        alpha, sigma2 = jnp.sqrt(jax.nn.sigmoid(-gamma)), jax.nn.sigmoid(gamma)
        covs = jnp.asarray(self.covs, z.dtype)[None]
        cov = alpha[:, None, :, None] * covs * alpha[:, None, None, :] + jnp.eye(self.dim) * sigma2[:, None, :, None]
        diff = z[:, None, :] - alpha[:, None, :] * jnp.asarray(self.means, z.dtype)[None]
        chol = jnp.linalg.cholesky(cov)
        solved = jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]
        return diff, solved, 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)

    def _log_joint(self, z, gamma):
        """log π_k + log N(z; α μ_k, C_k) [B, K]."""
        if gamma.ndim == 2:
            diff, solved, log_det = self._per_dimension(z, gamma)
            log_comp = -0.5 * (jnp.sum(diff * solved, -1) + log_det + self.dim * jnp.log(2 * jnp.pi))
        else:
            proj, var = self._in_eigenbasis(z, gamma)
            log_comp = -0.5 * (jnp.sum(proj**2 / var + jnp.log(var), -1) + self.dim * jnp.log(2 * jnp.pi))
        return log_comp + jnp.log(jnp.asarray(self.weights, jnp.float32))

    @staticmethod
    def _gamma(z, gamma):
        """gamma as [B] (or [B, d], one per dimension), in z's float type (float32, or float64 for references)."""
        dtype = z.dtype if jnp.issubdtype(z.dtype, jnp.floating) else jnp.float32
        gamma = jnp.asarray(gamma, dtype)
        return gamma if gamma.ndim == 2 else jnp.broadcast_to(gamma, z.shape[:1])

    def log_posterior(self, z, gamma):
        """log p(k | z_t) [B, K]: the exact noise-conditional classifier when labels are components."""
        return jax.nn.log_softmax(self._log_joint(z, self._gamma(z, gamma)), -1)

    def conditional(self, k: int) -> "GaussianMixture":
        """The mixture restricted to component k (x | y = k)."""
        return GaussianMixture(np.ones(1), self.means[k : k + 1], self.covs[k : k + 1])

    def log_prob(self, z, gamma):
        """log q(z_t) [B] for z [B, d] and a scalar gamma or gamma [B]."""
        return jax.nn.logsumexp(self._log_joint(z, self._gamma(z, gamma)), -1)

    def score(self, z, gamma):
        """∇_z log q(z_t) = −Σ_k w_k C_k⁻¹ (z − α μ_k), [B, d]."""
        gamma = self._gamma(z, gamma)
        w = jax.nn.softmax(self._log_joint(z, gamma), -1)  # responsibilities [B, K]
        if gamma.ndim == 2:
            return -jnp.einsum("bk,bkd->bd", w, self._per_dimension(z, gamma)[1])
        proj, var = self._in_eigenbasis(z, gamma)
        return -jnp.einsum("bk,bke,kde->bd", w, proj / var, self._eigh[1])

    def eps_hat(self, z, gamma):
        """The optimal denoiser E[ε | z_t] = −σ_t ∇ log q(z_t), [B, d]."""
        gamma = self._gamma(z, gamma)
        sigma = jnp.sqrt(jax.nn.sigmoid(gamma))
        return -(sigma if gamma.ndim == 2 else sigma[:, None]) * self.score(z, gamma)


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
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    return float(2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y))


@jax.jit
def _mean_distance(a, b):
    """Mean Euclidean distance over all pairs of rows of a [n, d] and b [m, d] (one fused program)."""
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(a[:, None] - b[None]), -1) + 1e-12))
