"""Writes tests/fixtures/inception_pytorch_fid.npz: pytorch-fid's own network on fixed inputs, with seeded weights.

Run outside the project's environment, in a throw-away virtualenv with the reference implementation:

    python3 -m venv /tmp/fidvenv && /tmp/fidvenv/bin/pip install torch torchvision pytorch-fid==0.3.0 numpy
    PYTHONPATH=. /tmp/fidvenv/bin/python tests/helpers/make_inception_fixture.py   # from the repository root

(the fixture in the repository was made with pytorch-fid 0.3.0, torch / torchvision as printed into the file's
`versions` entry). No weights are downloaded: pytorch-fid's loader is handed
`vdm.metrics.inception_weights.random_state_dict(names, seed=0)` (numpy only), so the test redraws the same
weights and only pytorch-fid's outputs are stored. Inputs: a [2, 3, 32, 32] batch (upsampled to 299) and a
[1, 3, 311, 305] one (downsampled, not square), uniform in [0, 1] from numpy's Generator(1234).
Stored (the inputs are redrawn by `inputs()`): pytorch-fid's `InceptionV3([3])` pool features [N, 2048] (its resize and 2 x - 1
included) and the logits of `fid_inception_v3().fc` on them [N, 1008].
"""

import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "inception_pytorch_fid.npz")
SEED = 0


def inputs() -> dict:
    rng = np.random.default_rng(1234)
    return {"small": rng.uniform(size=(2, 32, 32, 3)).astype(np.float32),
            "large": rng.uniform(size=(1, 311, 305, 3)).astype(np.float32)}


def main() -> None:
    from importlib.metadata import version

    import torch
    import torchvision
    from pytorch_fid import inception as fid

    from vdm.metrics.inception_weights import random_state_dict  # numpy only: PYTHONPATH=. (see above)

    torch.set_num_threads(2)
    # pytorch-fid's architecture (fid_inception_v3 without its download) for the names and shapes
    skeleton = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    skeleton.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    skeleton.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    skeleton.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    skeleton.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    skeleton.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    skeleton.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    skeleton.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    skeleton.Mixed_7b = fid.FIDInceptionE_1(1280)
    skeleton.Mixed_7c = fid.FIDInceptionE_2(2048)
    names = [(k, tuple(v.shape)) for k, v in skeleton.state_dict().items()]
    weights = random_state_dict(names, seed=SEED)
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    for k, _ in names:
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0, dtype=torch.long)
    fid.load_state_dict_from_url = lambda *a, **k: state  # pytorch-fid's own builder, our weights
    net = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    fc_w, fc_b = torch.from_numpy(weights["fc.weight"]), torch.from_numpy(weights["fc.bias"])
    out = {"seed": np.asarray(SEED),
           "versions": np.asarray(f"pytorch-fid {version('pytorch-fid')}, torch {torch.__version__}, "
                                  f"torchvision {torchvision.__version__}")}
    with torch.no_grad():
        for name, x in inputs().items():
            pool = net(torch.from_numpy(x).permute(0, 3, 1, 2))[0][:, :, 0, 0]
            out[f"{name}_pool"] = pool.numpy()
            out[f"{name}_logits"] = (pool @ fc_w.T + fc_b).numpy()
            print(name, x.shape, "pool", tuple(pool.shape), float(pool.mean()), float(pool.std()))
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e6:.1f} MB): {out['versions']}")


if __name__ == "__main__":
    main()
