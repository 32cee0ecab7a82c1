"""The model: one VDM, the thin glue between the math, the network and the samplers on one side and a run on the other.

    vdm_model.py    VDM: score network (`vdm.nets`) + schedule (`vdm.core.schedules`) + discretised
                    decoder -> the ELBO terms and the training loss of `vdm.core.losses`, the denoiser
                    (and its classifier-free guided form) that every sampler of `vdm.sampling` takes

It builds from a config (`VDM.from_config`) and knows nothing of workdirs, checkpoints,
optimizers or devices: those are `vdm.training`, which trains and evaluates it.
"""

from vdm.model.vdm_model import VDM

__all__ = ["VDM"]
