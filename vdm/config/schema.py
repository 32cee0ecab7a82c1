"""The config schema: every key any vdm run reads, with its type and the paper's default.

`base_config()` returns it. Config files (configs/*.py) start from it and
override a few values; they never add keys (`vdm.config.validation.validate`
rejects unknown keys by name, and a value of another type).
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """A fresh ConfigDict of every key with its default."""
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # a key of vdm.data.datasets.DATASETS
    c.data.image_shape = (8, 8, 1)  # H, W, C
    c.data.vocab_size = 17  # V: pixel values are 0..V-1
    c.data.num_classes = 10
    c.data.data_dir = ""  # tfds data dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.augmentation = "none"  # vdm.data.augment.AUGMENTATIONS (paper's CIFAR-10: flips + 90-degree rotations, fed as cond)

    c.model = ml_collections.ConfigDict()
    c.model.channels = 128
    c.model.num_blocks = 32  # N down blocks, N + 1 up blocks, 2 middle blocks
    c.model.dropout = 0.1
    c.model.attention_per_block = False
    c.model.fourier_features = True
    c.model.fourier_start = 6  # base-2 frequencies 2^k * 2pi, k in [start, stop)
    c.model.fourier_stop = 8
    c.model.fourier_step = 1
    c.model.fourier_scale = 1.0  # frequencies times this; V / 256 aligns them with a V-level grid
    c.model.cond_dim = 1  # extra conditioning inputs (augmentation flags); zeros if unused
    c.model.class_conditional = False
    c.model.label_dropout = 0.0  # classifier-free guidance: rate of replacing labels by the null label
    c.model.prediction = "eps"  # what the network predicts, vdm.core.diffusion.PREDICTIONS: eps | x | v | score
    c.model.input_skip = True  # eps_hat = z + net(z) (the official "base measure")
    c.model.norm_groups = 0  # GroupNorm groups; 0 = gcd(32, C/4), groups of >= 4 channels (32 = the official network's)
    c.model.scan_blocks = True
    c.model.recompute = True  # blocks keep conv1's output for the backward pass, recompute the rest (less memory)
    # How the network's convolutions, norms, attention and dropout run (vdm.nets.ops): "reference" (plain flax /
    # JAX), "cpu" (CPU-tuned forms of the same function), "auto" (cpu on the CPU backend, reference elsewhere).
    c.model.impl = "auto"
    c.model.dtype = "float32"  # compute dtype of convs, dense layers, attention: float32 | bfloat16 (params stay float32)

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "learned_linear"  # vdm.core.schedules.SCHEDULES
    c.schedule.gamma_min = -13.3
    c.schedule.gamma_max = 5.0
    c.schedule.width = 1024  # monotone_net only
    c.schedule.latent = "none"  # mulan only: none | gaussian | topk (vdm.nets.latent.LATENTS), MuLAN's auxiliary latent
    c.schedule.latent_dim = 8  # mulan with a latent: its dimension
    c.schedule.latent_k = 3  # latent topk only: how many of its latent_dim slots are on (MuLAN: 15 of 50)
    # monotone_net only: what its interior shape trains on. elbo | variance (the paper's variance-minimising
    # schedule: mean of the squared per-example diffusion loss; endpoints and network still train on the ELBO).
    # With a loss.weighting of lambda alone, variance makes the interior an adaptive importance sampler of lambda
    # for L_w (endpoints pinned at gamma_min, gamma_max)
    c.schedule.interior_objective = "elbo"

    c.loss = ml_collections.ConfigDict()
    c.loss.num_steps = 0  # T: 0 = continuous time
    # The diffusion loss's weighting w(lambda) of the log-SNR lambda, vdm.core.weightings.WEIGHTINGS: elbo (w = 1,
    # the ELBO itself) | sigmoid | edm | edm_monotonic | eps_mse (DDPM's L_simple) | v_mse. Test bits/dim are the ELBO's.
    c.loss.weighting = "elbo"
    c.loss.weighting_bias = 0.0  # sigmoid only: b in w = sigmoid(b - lambda)
    c.loss.decoder_window = 3  # decoder normaliser over 7 bins around z_0 (exact in float32; full V when not); 0 = all V

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-4
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"  # constant | cosine (to zero at training.num_steps)
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.01
    c.optim.grad_clip = 1.0  # global norm; 0 disables
    c.optim.accumulate_steps = 1  # gradient accumulation (optax.MultiSteps)
    c.optim.ema_decay = 0.9999  # warmed up: min(decay, (1 + n) / (10 + n))
    c.optim.schedule_lr_scale = 1.0  # learning-rate multiplier for a learned schedule's interior (monotone_net)

    c.training = ml_collections.ConfigDict()
    c.training.num_steps = 10_000_000
    c.training.batch_size = 128
    c.training.seed = 0
    c.training.max_seconds = 0.0  # wall-clock cap on training; 0 = none
    c.training.steps_per_call = 1  # optimizer steps per compiled call (lax.scan)
    c.training.donate_state = True  # donate the train state's buffers to the step (updated in place)
    c.training.log_every = 100
    c.training.eval_every = 10_000
    c.training.on_nonfinite = "stop"  # stop | skip: a NaN/inf loss or gradient rejects the update, then this

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 10_000  # also at every eval, at the end and on SIGTERM / SIGINT
    c.checkpoint.every_minutes = 10.0  # 0 = only by steps
    c.checkpoint.max_to_keep = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256
    # Test bits/dim (vdm.core.elbo_estimator): every example gets its own draws, points_per_example stratified
    # points of the diffusion term (discrete time: every step once when loss.num_steps <= this), placed by
    # time_density (log_snr_uniform: uniform in log-SNR between the schedule's endpoints; schedule: the model's own
    # t-sampling), and num_repeats independent repeats (>= 2 gives the Monte-Carlo error '*_mc_stderr').
    c.eval.points_per_example = 8
    c.eval.time_density = "log_snr_uniform"
    c.eval.num_repeats = 2
    c.eval.num_samples = 100  # final samples (samples_final.png, samples.npz); grids during training show <= 100
    c.eval.sampler = "ancestral"  # the sampler of the final samples and the grids during training (vdm.sampling.SAMPLERS)
    c.eval.sampler_steps = 1000
    # Matmul / conv precision of test bits/dim and likelihoods (jax.default_matmul_precision): "highest" keeps
    # reported numbers free of the backend's defaults (TPU bf16 passes, GPU TF32); "default" is the backend's.
    c.eval.matmul_precision = "highest"

    # The CPU backend only (ignored on GPU / TPU). devices > 0 splits the host CPU into that many JAX devices,
    # over which training, evaluation and sampling are data-parallel like over GPUs: on a small network a 2-core
    # CPU runs ~1.4x faster as 2 devices than as one. The device count changes float rounding (the gradient
    # all-reduce), so it is part of what a run computes. 0 = JAX's default (one CPU device).
    c.cpu = ml_collections.ConfigDict()
    c.cpu.devices = 0

    return c
