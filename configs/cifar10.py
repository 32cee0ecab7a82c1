"""CIFAR-10, the paper's configuration (Kingma et al. 2021, Table / appendix B).

No downsampling: 32 ResNet blocks of 128 channels down, 33 up, 2 middle around
one attention layer; Fourier features 2^6, 2^7; dropout 0.1; learned-endpoint
log-SNR-linear schedule starting at [-13.3, 5]; AdamW lr 2e-4, betas (0.9, 0.99),
weight decay 0.01; EMA 0.9999; batch 128; 10M steps. 30,578,181 parameters
(network + 2 schedule parameters), the official implementation's count.

Run (accelerators, data prepared with tfds):
  python -m vdm.main --config=configs/cifar10.py --workdir=runs/cifar10
Should reproduce the paper's 2.65 test bits/dim (no augmentation; the official
checkpoint re-evaluates to 2.637) after 10M steps.

configs/cifar10.py:mulan, MuLAN's CIFAR-10 settings (Sahoo et al. 2024, s-sahoo/MuLAN
ldm/configs/cifar10-conditioned.py): a per-pixel polynomial schedule with fixed endpoints
[-13.3, 5] conditioned on a top-k latent (15 of 50 slots on) that also conditions the network;
the same U-Net (128 channels, 32 blocks, Fourier features, dropout 0.1, no attention in the
blocks); AdamW 2e-4, betas (0.9, 0.99), weight decay 0.01, 100 warm-up steps, constant rate;
EMA 0.9999; batch 128; 10M steps; the ELBO in continuous time with v-prediction.
  python -m vdm.main --config=configs/cifar10.py:mulan --workdir=runs/cifar10_mulan
  python -m vdm.main --config=configs/cifar10.py:mulan --workdir=runs/cifar10_mulan --mode=likelihood
MuLAN publishes 2.55 test bits/dim (its ODE likelihood with i-DODE's truncated-normal
dequantisation, the `ODE, truncated_normal` line of --mode=likelihood) after 10M steps. Why v-prediction: MuLAN's
"velocity" loss, 1/2 (1 - sigma_t^2) gamma'(t) |v - v_hat|^2, is this codebase's ELBO diffusion
loss with model.prediction = v, since eps - eps_hat = alpha_t (v - v_hat) exactly; errors of v_hat
reach eps_hat times alpha_t <= 1 (x-prediction would multiply them by alpha_t / sigma_t, up to 775
at gamma = -13.3). Differences from MuLAN's code: the latent's encoder is two convolutions and a
dense layer (MuLAN: a small U-Net) and its noise is Gumbel (MuLAN: sums of Gamma draws), so that
q(c | x) is known and its KL in the bound exact (see vdm.nets.latent); MuLAN evaluates with a
fixed latent and importance samples, --mode=likelihood here with one c ~ q(c | x) per example.
"""

from vdm.config.schema import base_config

VARIANTS = (None, "mulan")  # the values get_config(arg) accepts


def get_config(arg=None):
    c = base_config()
    c.data.name = "cifar10"
    c.data.image_shape = (32, 32, 3)
    c.data.vocab_size = 256
    c.data.num_classes = 10
    c.model.channels = 128
    c.model.num_blocks = 32
    c.training.batch_size = 128
    c.training.num_steps = 10_000_000
    c.training.log_every = 1000
    c.training.eval_every = 50_000
    c.eval.batch_size = 500
    c.eval.num_samples = 64
    if arg == "mulan":
        c.schedule.name = "mulan"
        c.schedule.latent = "topk"
        c.schedule.latent_dim = 50
        c.schedule.latent_k = 15
        c.model.prediction = "v"
        c.optim.warmup_steps = 100
        c.eval.time_density = "schedule"  # one gamma per pixel: evaluation follows the schedule's own path
    elif arg not in (None, ""):
        raise ValueError(f"configs/cifar10.py: unknown variant {arg!r}; expected one of {VARIANTS[1:]}")
    return c
