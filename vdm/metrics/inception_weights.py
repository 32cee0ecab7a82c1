"""Weights of the FID Inception-v3 (`vdm.metrics.inception`): pytorch-fid's release file, converted once to .npz.

    # once, on a machine with the internet (the file is 91 MB; torch only for this step):
    pip install -e '.[fid-convert]'
    curl -L -o pt_inception-2015-12-05-6726825d.pth \\
        https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m vdm.metrics.inception_weights pt_inception-2015-12-05-6726825d.pth   # -> DATA_DIR/inception/...npz

The .pth is checked against its SHA-256 (REFERENCE_SHA256; its first 8 hex digits are the 6726825d in the file
name, torch hub's convention) before it is read. The .npz holds the state dict under pytorch-fid's names
(`Mixed_5b.branch1x1.conv.weight`, ...), as float32; `variables_from_state_dict` maps them onto the Flax
network: conv [O, I, kh, kw] -> kernel [kh, kw, I, O], bn.weight / bias -> scale / bias, running_mean / var
-> batch_stats mean / var, fc.weight [1008, 2048] -> kernel [2048, 1008].

`random_state_dict(names_and_shapes, seed)` draws stand-in weights (numpy only, one generator per tensor seeded
by its name, so the draw does not depend on the order): the tests' equality check against pytorch-fid and the
pipeline's end-to-end test use them; `python -m vdm.metrics.inception_weights --random=SEED OUT.npz` writes
such a file (its features mean nothing).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import zlib

import numpy as np

from vdm.errors import ConfigError

REFERENCE_FILE = "pt_inception-2015-12-05-6726825d.pth"
REFERENCE_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{REFERENCE_FILE}"
REFERENCE_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
CONVERTED_FILE = "pt_inception-2015-12-05.npz"
ENV_VAR = "VDM_INCEPTION_WEIGHTS"

_FLAX_TO_TORCH = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                  ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_path(data_dir: str | None = None) -> str:
    """$VDM_INCEPTION_WEIGHTS, else DATA_DIR/inception/pt_inception-2015-12-05.npz (DATA_DIR: the datasets' folder)."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    if data_dir is None:
        from vdm.data.datasets import default_data_dir

        data_dir = default_data_dir()
    return os.path.join(data_dir, "inception", CONVERTED_FILE)


def missing_weights_error(path: str) -> ConfigError:
    return ConfigError(f"no Inception weights at {path}: download {REFERENCE_URL} once and run "
                       f"`python -m vdm.metrics.inception_weights {REFERENCE_FILE} --out={path}` "
                       f"(needs pip install -e '.[fid-convert]'; or set {ENV_VAR}); docs/sampling.md, 'Inception FID'")


def _torch_names(variables) -> dict:
    """{pytorch-fid state-dict name: (collection, flax path, torch shape)} for the network's variables."""
    import jax

    names = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        keys = [p.key for p in path]
        collection, modules, leaf_name = keys[0], keys[1:-1], keys[-1]
        shape = tuple(leaf.shape)
        if leaf_name == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (shape[1], shape[0])
        names[".".join([*modules, _FLAX_TO_TORCH[(collection, leaf_name)]])] = (collection, keys[1:], shape)
    return names


def network_names_and_shapes() -> list[tuple[str, tuple]]:
    """[(pytorch-fid name, torch shape)] of every tensor the network needs, sorted by name."""
    from vdm.metrics import inception

    return sorted((name, shape) for name, (_, _, shape) in _torch_names(inception.variable_shapes()).items())


def variables_from_state_dict(state_dict) -> dict:
    """pytorch-fid's state dict {name: array} -> the Flax network's {'params', 'batch_stats'} (float32).

    Every name the network needs must be there with its shape (a ConfigError names the first that is not);
    `num_batches_tracked` entries are ignored, any other extra name is an error.
    """
    import jax
    import jax.numpy as jnp

    from vdm.metrics import inception

    wanted = _torch_names(inception.variable_shapes())
    extra = sorted(k for k in state_dict if k not in wanted and not k.endswith("num_batches_tracked"))
    missing = sorted(k for k in wanted if k not in state_dict)
    if extra or missing:
        raise ConfigError(f"not the FID Inception-v3's weights: missing {missing[:3]}, unexpected {extra[:3]}")
    variables: dict = {}
    for name, (collection, path, shape) in wanted.items():
        value = np.asarray(state_dict[name], np.float32)
        if value.shape != shape:
            raise ConfigError(f"not the FID Inception-v3's weights: {name} has shape {value.shape}, expected {shape}")
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        node = variables.setdefault(collection, {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return jax.tree.map(jnp.asarray, variables)


def random_state_dict(names_and_shapes, seed: int = 0) -> dict:
    """Stand-in weights {name: float32 array} that keep activations O(1) through the network: convolutions
    N(0, 2 / fan_in) (He), batch-norm scales U(0.8, 1.2), biases and running means N(0, 0.1^2), running
    variances U(0.8, 1.2), fc N(0, 1 / 2048). Each tensor from Generator([seed, crc32(name)])."""
    out = {}
    for name, shape in names_and_shapes:
        shape = tuple(int(s) for s in shape)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("conv.weight"):
            value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif name.endswith("bn.weight") or name.endswith("running_var"):
            value = rng.uniform(0.8, 1.2, size=shape)
        elif name == "fc.weight":
            value = rng.normal(size=shape) / np.sqrt(shape[1])
        else:  # bn.bias, running_mean, fc.bias
            value = 0.1 * rng.normal(size=shape)
        out[name] = value.astype(np.float32)
    return out


def read_pth(path: str) -> dict:
    """pytorch-fid's .pth -> {name: float32 array}, after checking its SHA-256 (needs torch: the fid-convert extra)."""
    digest = sha256(path)
    if digest != REFERENCE_SHA256:
        raise ConfigError(f"{path} is not pytorch-fid's {REFERENCE_FILE}: SHA-256 {digest[:16]}..., expected "
                          f"{REFERENCE_SHA256[:16]}... (download {REFERENCE_URL})")
    try:
        import torch
    except ImportError:
        raise ConfigError("reading the .pth needs torch, once: pip install -e '.[fid-convert]'") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().numpy() for k, v in state.items()}


def write_npz(state_dict: dict, out: str, source: str) -> str:
    """Writes the state dict to out (.npz, atomically) with a `__source__` line; returns out."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.npz"
    np.savez(tmp, __source__=np.asarray(source), **state_dict)
    os.replace(tmp, out)
    return out


def load_variables(path: str) -> tuple[dict, str]:
    """(Flax variables, SHA-256 of the file) from a converted .npz; a ConfigError if it is missing or not one."""
    if not os.path.exists(path):
        raise missing_weights_error(path)
    if path.endswith(".pth"):
        raise ConfigError(f"{path}: convert it first, `python -m vdm.metrics.inception_weights {path}`")
    try:
        with np.load(path) as f:
            state = {k: f[k] for k in f.files if k != "__source__"}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable .npz of Inception weights ({e.__class__.__name__}: {e})") from None
    return variables_from_state_dict(state), sha256(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Convert pytorch-fid's Inception weights (.pth) to .npz, once.")
    parser.add_argument("pth", nargs="?", help=f"the downloaded {REFERENCE_FILE}")
    parser.add_argument("--out", default=None, help="where to write the .npz (default: DATA_DIR/inception/...)")
    parser.add_argument("--random", type=int, default=None, metavar="SEED",
                        help="write stand-in random weights instead (tests and dry runs; meaningless features)")
    args = parser.parse_args(argv)
    out = args.out or default_path()
    try:
        if args.random is not None:
            state, source = random_state_dict(network_names_and_shapes(), args.random), f"random seed {args.random}"
        elif args.pth:
            state, source = read_pth(args.pth), f"{REFERENCE_FILE} sha256 {REFERENCE_SHA256}"
            variables_from_state_dict(state)  # every name and shape checked before anything is written
        else:
            parser.error("give the .pth to convert, or --random=SEED")
        print(f"wrote {write_npz(state, out, source)} ({source})")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
