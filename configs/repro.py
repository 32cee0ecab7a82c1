"""The paper's ablations at a size that runs on 2 CPU cores: one variant and sweep per finding.

Each variant is driven by an experiments/reproduce_*.py script, run from the
repository root, which runs its sweep (`get_sweep`) and writes
results/<name>.md and a figure:

  steps       T = 10, 100, 1000 and continuous time, 3 seeds, 600 steps each
              python -m experiments.reproduce_steps               (~20 min; results/steps.md)
  schedule    monotone-net schedule, interior trained on the ELBO or on the loss
              variance (its learning rate 10x the network's), 2 seeds, 150 s of training each
              python -m experiments.reproduce_variance_training   (results/variance_training.md)
  fourier     Fourier features on / off, 8-bit 16x16x3 photo patches, 2 seeds
              python -m experiments.reproduce_fourier             (results/fourier.md)
  prediction  eps / x / v prediction under the same ELBO, 2 seeds
              python -m experiments.reproduce_prediction          (results/prediction.md)
  learned_noise, learned_noise_patches
              scalar learned endpoints, scalar fixed at [gamma_min, gamma_max] (the control: the endpoints
              the per-pixel schedules keep), the
              variance-minimising monotone net, MuLAN's per-pixel polynomial
              schedule without and with its top-k latent (8 slots, 3 on), 3 seeds, on digits and on 16x16x3
              photo patches; the schedules' shapes (and MuLAN's encoder and head) at 10x the network's
              learning rate, endpoints at 1x; every variant evaluated with
              the schedule's own time density; eps-prediction, as in the other variants (v ties with it
              here: results/prediction.md)
              python -m experiments.reproduce_learned_noise       (results/learned_noise.md)
  weighting   the diffusion loss's weighting w(lambda) (elbo, sigmoid b = -2 / 2, edm, edm_monotonic,
              eps_mse) under the demo's fixed alpha-cosine schedule on [-8, 5], 2 seeds, 600 steps:
              test bpd (the ELBO) against FD-digits of 1000 DPM-Solver++ 2M samples at 20 NFE
              python -m experiments.reproduce_weighting           (results/weighting.md)

The model is a 16-channel, 2-block U-Net on digits (8x8, V = 17) trained on the
continuous-time ELBO with learned log-SNR-linear endpoints (initially [-8, 5]),
AdamW 2e-3 with cosine decay. Expected results (2 cores): test bpd 2.24-2.26 in
continuous time and for T = 1000 (4.35 at T = 10, 2.39 at T = 100); see each
results file for the measured figures.
"""

import os

from vdm.config.validation import load_config_file

VARIANTS = (None, "steps", "schedule", "fourier", "prediction", "weighting", "learned_noise", "learned_noise_patches")  # the values get_config(arg) accepts


def get_config(arg=None):
    c = load_config_file(os.path.join(os.path.dirname(__file__), "digits.py"))
    # the settings the results in results/ were measured with, where digits.py has changed since
    c.model.attention_per_block = True
    c.cpu.devices = 0
    c.eval.batch_size = 297
    c.model.channels = 16
    c.model.num_blocks = 2
    c.schedule.name = "learned_linear"
    c.loss.weighting = "elbo"
    c.optim.warmup_steps = 100
    c.training.num_steps = 600
    c.training.max_seconds = 0.0  # equal step budgets: deterministic given the seed
    c.training.eval_every = 600
    c.checkpoint.every_steps = 300
    c.eval.num_samples = 64
    c.eval.sampler_steps = 100

    if arg in (None, "", "steps", "prediction"):
        pass
    elif arg == "schedule":
        c.schedule.name = "monotone_net"
        c.optim.schedule_lr_scale = 10.0  # at the network's 2e-3 the shape barely moves in 150 s
        c.training.num_steps = 20_000  # the wall-clock cap below ends training
        c.training.max_seconds = 150.0
        c.training.log_every = 20
        c.training.eval_every = 20_000
        c.checkpoint.every_steps = 20_000
    elif arg == "fourier":
        _photo_patches16(c)
        c.model.fourier_scale = 1.0
    elif arg == "weighting":
        c.schedule.name = "alpha_cosine"  # fixed (only the ELBO trains learned endpoints): the demo's schedule
        c.eval.num_samples = 1000  # FD-digits / KID-digits of 1000 samples
        c.eval.sampler = "dpm_solver_pp_2m"
        c.eval.sampler_steps = 20
    elif arg in ("learned_noise", "learned_noise_patches"):
        c.optim.schedule_lr_scale = 10.0  # at the network's 2e-3 a per-pixel shape barely leaves linear in 600 steps
        c.eval.time_density = "schedule"  # the one density every schedule here has, per-pixel ones included
        c.schedule.latent_dim = 8
        c.schedule.latent_k = 3
        if arg == "learned_noise_patches":
            _photo_patches16(c)
            c.model.fourier_features = False  # at this size they cost 1.4 bpd on these patches (results/fourier.md)
    else:
        raise ValueError(f"configs/repro.py: unknown variant {arg!r}; expected one of {VARIANTS[1:]}")
    return c


def _photo_patches16(c):
    """16x16x3 8-bit patches of sklearn's two photographs, 400 steps of batch 32."""
    c.data.name = "photo_patches16"
    c.data.image_shape = (16, 16, 3)
    c.data.vocab_size = 256
    c.data.num_classes = 2
    c.schedule.gamma_min = -13.3  # 8-bit data: the paper's range
    c.training.batch_size = 32
    c.training.num_steps = 400
    c.training.eval_every = 400
    c.checkpoint.every_steps = 200
    c.eval.batch_size = 260
    c.eval.num_samples = 16


def get_sweep(arg=None):
    if arg in (None, "", "steps"):
        return [{"loss.num_steps": t, "training.seed": s} for t in (10, 100, 1000, 0) for s in (0, 1, 2)]
    if arg == "schedule":
        return [{"schedule.name": "monotone_net", "schedule.interior_objective": o, "training.seed": s}
                for o in ("elbo", "variance") for s in (0, 1)]
    if arg == "fourier":
        return [{"model.fourier_features": f, "training.seed": s} for f in (True, False) for s in (0, 1)]
    if arg == "prediction":
        return [{"model.prediction": p, "training.seed": s} for p in ("eps", "x", "v") for s in (0, 1)]
    if arg == "weighting":
        weightings = [{"loss.weighting": "elbo"}, {"loss.weighting": "sigmoid", "loss.weighting_bias": -2.0},
                      {"loss.weighting": "sigmoid", "loss.weighting_bias": 2.0}, {"loss.weighting": "edm"},
                      {"loss.weighting": "edm_monotonic"}, {"loss.weighting": "eps_mse"}]
        return [{**w, "training.seed": s} for w in weightings for s in (0, 1)]
    if arg in ("learned_noise", "learned_noise_patches"):
        return [{**v, "training.seed": s} for v in LEARNED_NOISE for s in (0, 1, 2)]
    raise ValueError(f"configs/repro.py: no sweep for variant {arg!r}")


LEARNED_NOISE = (  # the schedules of experiments/reproduce_learned_noise.py
    {"schedule.name": "learned_linear", "schedule.latent": "none"},
    {"schedule.name": "fixed_linear", "schedule.latent": "none"},  # the control: the per-pixel schedules' endpoints, fixed
    {"schedule.name": "monotone_net", "schedule.latent": "none", "schedule.interior_objective": "variance"},
    {"schedule.name": "mulan", "schedule.latent": "none"},
    {"schedule.name": "mulan", "schedule.latent": "topk"},
)
