"""The mathematics of a VDM as pure functions of arrays and callables: no networks, no training, no I/O.

    diffusion.py   the Gaussian process in SNR form: q(z_t | x), transitions, posteriors, KLs,
                   the denoiser's parameterisations (eps, x, v, score) and their registry
    schedules.py   noise schedules gamma(t) = -log SNR(t) and their registry
    objective.py   the diffusion loss L_w = 1/2 sum_i w(lambda) rate (eps - eps_hat)_i^2: the one loss function
    losses.py      the ELBO terms (prior, reconstruction, diffusion via objective.py), the training loss of
                   every weighting in bits/dim, the variance-minimising schedule gradient
    elbo_estimator.py  the ELBO as evaluation estimates it: independent draws per example, stratified
                   points sampled uniformly in log-SNR (test bits/dim everywhere)
    weightings.py  weightings w(lambda) of the diffusion loss (ELBO, sigmoid, EDM, L_simple, v-MSE) and their registry
"""
