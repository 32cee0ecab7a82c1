"""sklearn digits (8x8, V = 17), sized for a 2-core CPU: the default `make demo` config.

Two variants, the paper's likelihood-vs-samples trade-off made explicit:

* default (`make demo`, ~10 minutes on 2 cores including the install): DDPM's
  L_simple under an alpha-cosine schedule on [-8, 5], 3000 steps (no wall-clock
  cap) of a U-Net with attention in its middle block only, run as 2 CPU devices
  (`cpu.devices`), final samples from the predictor-corrector sampler at 200
  levels. It puts its training signal at mid and low SNR, where digit shapes are
  decided, so samples look like digits; test bpd is still computed with the exact
  continuous-time ELBO. Training seeds 0, 1, 2: test bpd <= 1.9 and the sample
  check (`python -m vdm.metrics.digits_quality`, 1000 samples) passes with confidence
  ratio >= 0.92 (README, "Quick start"); test bpd 1.834, 1.824, 1.766
  +- 0.018 (2026-12-05). Since every weighting trains in bits/dim (the loss is
  L_simple / ln 2; the trajectory differs only through Adam's epsilon), seed 0:
  test bpd 1.833 +- 0.018, ratio 0.91 (2026-12-05).
      python -m vdm.main --config=configs/digits.py --workdir=runs/digits
* `long` (~20 minutes on 2 cores): trains the ELBO itself with learned
  log-SNR-linear endpoints (initial gamma range [-8, 5]), the best likelihood:
  test bpd 1.743 +- 0.020 (seed 0, 7000 steps, 2026-12-05; the estimator before
  that day read 1.662 for the same model, a Monte-Carlo low: its mean over 6
  keys was 1.730).
      python -m vdm.main --config=configs/digits.py:long --workdir=runs/digits_long
* `conditional` (~10 minutes): the default, class-conditional, with labels
  replaced by the null label 15% of the time for classifier-free guidance.
  `python -m experiments.guidance_digits` trains it and writes the guidance table
  (results/guidance_digits.md, measured with an earlier default: attention in
  every block, 1 device).
      python -m vdm.main --config=configs/digits.py:conditional --workdir=runs/digits_conditional

References on the same 297-image test split: per-pixel categorical 2.44,
linear autoregressive 2.10 bits/dim; the official VDM code reaches 2.69 in
8 minutes here (hand-tuned) and 1.96 in 40.
"""

from vdm.config.schema import base_config

VARIANTS = (None, "long", "conditional")  # the values get_config(arg) accepts


def get_config(arg=None):
    c = base_config()
    c.data.name = "digits"
    c.data.image_shape = (8, 8, 1)
    c.data.vocab_size = 17
    c.data.num_classes = 10

    c.model.channels = 32
    c.model.num_blocks = 4
    c.model.dropout = 0.0
    c.model.attention_per_block = False  # 8x8 digits: attention in the middle block only, 1.4x faster steps
    c.model.fourier_scale = 17 / 256  # one period of the k = 7 feature per grey level
    c.model.scan_blocks = False  # 4 blocks compile fast unrolled; XLA:CPU runs conv backward in loops slowly

    c.schedule.name = "alpha_cosine"
    c.schedule.gamma_min = -8.0  # 17 grey levels: below gamma = -8 the noise is far inside one bin
    c.schedule.gamma_max = 5.0
    c.loss.weighting = "eps_mse"  # DDPM's L_simple (before the weightings: loss.objective = "simple")

    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 200
    c.optim.decay = "cosine"
    c.optim.ema_decay = 0.999

    c.training.batch_size = 64
    c.training.num_steps = 3000  # a fixed number of steps, no wall-clock cap: the same result on any machine
    c.training.max_seconds = 0.0
    c.training.log_every = 100
    c.training.eval_every = 3000  # the final evaluation only: pictures at 200 PC levels cost ~20 s each
    c.checkpoint.every_steps = 500
    c.checkpoint.every_minutes = 5.0
    c.training.steps_per_call = 1  # >1 puts the step in a while loop, where XLA:CPU conv backward is slow
    c.cpu.devices = 2  # on a CPU backend, 2 data-parallel devices: ~1.4x the steps per second of one on 2 cores

    c.eval.batch_size = 298  # the 297 test digits in one batch (padded to split over 2 devices)
    # Predictor-corrector, 200 levels (399 network calls): on one 3500-step model of an earlier form of this config
    # the sample check's confidence ratio was 0.99 / 1.01 (two sampling seeds), against 0.90 / 0.86 for ancestral
    # T = 100 and 0.92 / 0.86 for ancestral T = 400 (docs/results.md, 2026-12-01).
    c.eval.sampler = "pc"
    c.eval.sampler_steps = 200
    c.eval.num_samples = 1000  # the ratio's sampling standard error is ~0.02 with 1000 samples

    if arg == "long":
        c.schedule.name = "learned_linear"
        c.loss.weighting = "elbo"
        c.training.num_steps = 7000
        c.training.eval_every = 3500
    elif arg == "conditional":
        c.model.class_conditional = True
        c.model.label_dropout = 0.15
    elif arg not in (None, ""):
        raise ValueError(f"configs/digits.py: unknown variant {arg!r}; expected 'long', 'conditional' or nothing")
    return c
