"""python -m vdm.import_official --checkpoint=PATH --workdir=DIR [--config=configs/cifar10.py] [--config.KEY=VALUE ...]

Imports a checkpoint of the official VDM code (google-research/vdm: `checkpoints-0/`,
or its `ckpt-N.flax`) as a vdm run workdir at the official step, after which
`python -m vdm.main --workdir=DIR --mode=eval|sample|likelihood` evaluates it and
`python -m vdm.main --workdir=DIR` fine-tunes it. The work is in `vdm.training.official`.
Errors print one line `vdm: <kind>: <message>` (exit 1; 2 for a config error) and write nothing.
"""

from vdm.training.official import cli

if __name__ == "__main__":
    cli()
