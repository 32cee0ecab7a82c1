"""The mathematics of a VDM as pure functions of arrays and callables: no networks, no training, no I/O.

    diffusion.py   the Gaussian process in SNR form: q(z_t | x), transitions, posteriors, KLs,
                   the denoiser's parameterisations (eps, x, v, score) and their registry
    schedules.py   noise schedules gamma(t) = -log SNR(t) and their registry
    losses.py      the ELBO terms (prior, reconstruction, diffusion L_T / L_inf), L_simple,
                   the variance-minimising schedule gradient, the weighted diffusion loss
    elbo_estimator.py  the ELBO as evaluation estimates it: independent draws per example, stratified
                   points sampled uniformly in log-SNR (test bits/dim everywhere)
    weightings.py  weightings w(lambda) of the diffusion loss (ELBO, sigmoid, EDM, L_simple, v-MSE) and their registry
"""
