"""--mode=sample_quality --metric=inception: FID, KID, Inception Score and precision / recall of a run's samples.

    python -m vdm.main --workdir=WORKDIR --mode=sample_quality --metric=inception --sampler=dpm_solver_pp_3m \
        --steps=20 [--samples=50000]

The network is `vdm.metrics.inception.FIDInceptionV3` with pytorch-fid's weights converted once
(`vdm.metrics.inception_weights`; without them this stops with one line saying where to put the file).
Samples are drawn in batches of `per_device x devices`, each batch sharded over every device of the run's mesh
(sampling and the network alike); only the features [N, 2048] and logits [N, 1008] come back to the host.

The reference is the dataset's train split (at most --reference_images, 50,000 by default, a seeded subset beyond that): its
feature mean and covariance (FID) and REFERENCE_FEATURES of its features (KID, precision / recall), computed
once and cached as DATA_DIR/vdm_inception_stats/<dataset>-<tfds version>_train_<n>_resize299-bilinear_
w<weights' SHA-256[:12]>.npz, so a cache never mixes datasets, versions, splits, resizing or weights.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm.metrics import feature_distances, inception, inception_metrics, inception_weights
from vdm.training import distributed, generation

REFERENCE_IMAGES = 50_000
REFERENCE_FEATURES = 10_000  # kept for KID and precision / recall (memory: 80 MB)
RESIZE = "resize299-bilinear"  # half-pixel centres, no antialiasing (torch's F.interpolate, as pytorch-fid)


def per_device_batch() -> int:
    """Images per device and call: 256 on an accelerator, 32 on CPU (Inception's activations at 299 x 299)."""
    return 32 if jax.default_backend() == "cpu" else 256


@dataclasses.dataclass
class Network:
    variables: dict
    weights_sha256: str
    path: str

    @classmethod
    def load(cls, data_dir: str | None = None) -> "Network":
        path = inception_weights.default_path(data_dir)
        variables, digest = inception_weights.load_variables(path)
        return cls(variables, digest, path)

    def apply(self, mesh, images, vocab_size: int):
        """(pool [B, 2048], logits [B, 1008]) of integer images [B, H, W, C] in {0..V-1} (C = 1 is repeated)."""
        return _features(self.variables, images, vocab_size, mesh)


@jax.jit
def _network(variables, x):
    return inception.FIDInceptionV3().apply(variables, x)


def _features(variables, images, vocab_size, mesh):
    x = distributed.constrain_to_batch(mesh)(jnp.asarray(images).astype(jnp.float32) / (vocab_size - 1))
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return _network(variables, x)


def _batches(n: int, batch: int):
    return [(lo, min(lo + batch, n)) for lo in range(0, n, batch)]


def _progress(total: int, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=not show, mininterval=2.0)


def reference_statistics(config, network: Network, mesh, max_images: int = REFERENCE_IMAGES, show: bool = True) -> dict:
    """{'mu', 'sigma', 'features', 'n', 'path'} of the train split of config.data.name, cached (see the module)."""
    from vdm.data.datasets import Source, default_data_dir

    data_dir = config.data.data_dir or default_data_dir()
    source = Source(config.data.name, "train", data_dir or None)
    n = min(len(source), max_images)
    name = (f"{config.data.name}-{source.version}_train_{n}_{RESIZE}_w{network.weights_sha256[:12]}.npz")
    path = os.path.join(data_dir, "vdm_inception_stats", name)
    if os.path.exists(path):
        with np.load(path) as f:
            return {"mu": f["mu"], "sigma": f["sigma"], "features": f["features"], "n": int(f["n"]), "path": path}
    order = np.arange(n) if n == len(source) else np.sort(np.random.default_rng(0).permutation(len(source))[:n])
    batch = per_device_batch() * mesh.devices.size
    feats = []
    with _progress(n, f"Inception features of {config.data.name} train", show) as bar:
        for lo, hi in _batches(n, batch):
            images = np.stack([source[int(i)]["images"] for i in order[lo:hi]])
            padded = np.concatenate([images, np.repeat(images[-1:], batch - len(images), 0)])
            pool, _ = network.apply(mesh, padded, config.data.vocab_size)
            feats.append(distributed.to_host(pool)[: len(images)].astype(np.float64))
            bar.update(len(images))
    feats = np.concatenate(feats)
    keep = np.random.default_rng(1).permutation(n)[:REFERENCE_FEATURES]
    stats = {"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False), "features": feats[keep].astype(np.float32),
             "n": n}
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **stats)
        os.replace(tmp, path)
    return {**stats, "path": path}


def sample_features(run, params, key, n: int, sampler: str, steps: int, labels_for, guidance: float,
                    network: Network, show: bool = True):
    """(pool [n, 2048], logits [n, 1008], seconds of sampling + features): n samples drawn batch by batch.

    Batch b uses key fold_in(key, b) (key itself when one batch holds all n); labels_for(lo, hi) gives the
    class labels of samples lo..hi (None: unconditional). The last batch is drawn whole and cut.
    """
    devices = run.mesh.devices.size
    batch = devices * min(per_device_batch(), -(-n // devices))
    pools, logits, seconds = [], [], 0.0
    parts = _batches(n, batch)
    with _progress(n, f"{sampler} {steps} steps", show) as bar:
        for b, (lo, hi) in enumerate(parts):
            k = key if len(parts) == 1 else jax.random.fold_in(key, b)
            labels = labels_for(lo, lo + batch)
            start = time.perf_counter()
            samples = generation.sample(run.model, params, k, batch, sampler, steps, labels, guidance, run.mesh)
            pool, logit = jax.block_until_ready(network.apply(run.mesh, samples, run.model.vocab_size))
            seconds += time.perf_counter() - start
            pools.append(distributed.to_host(pool)[: hi - lo])
            logits.append(distributed.to_host(logit)[: hi - lo])
            bar.update(hi - lo)
    return np.concatenate(pools), np.concatenate(logits), seconds


def inception_measures(pool, logits, reference) -> dict:
    """FID (against the reference's moments), KID ± s.e. and precision / recall (against its kept features), IS."""
    fid = feature_distances.frechet_from_moments(*_moments(pool), reference["mu"], reference["sigma"])
    ref = reference["features"]
    kid, kid_se = feature_distances.kid(pool, ref, num_blocks=max(2, min(10, len(pool) // 2, len(ref) // 2)))
    precision, recall = inception_metrics.precision_recall(ref, pool, k=3)
    splits = 10 if len(logits) >= 10 else 1
    is_mean, is_sd = inception_metrics.inception_score(logits, splits)
    return {"fid": fid, "kid": kid, "kid_stderr": kid_se, "inception_score": is_mean, "inception_score_sd": is_sd,
            "precision": precision, "recall": recall}


def _moments(feats):
    f = np.asarray(feats, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


TABLE_HEAD = ("| sampler | NFE | FID | KID ± s.e. | IS ± s.d. | precision | recall | seconds |\n"
              "|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    return (f"| {r['sampler']} | {r['nfe']} | {r['fid']:.2f} | {r['kid']:.4f} ± {r['kid_stderr']:.4f} | "
            f"{r['inception_score']:.2f} ± {r['inception_score_sd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['seconds']:.1f} |")


def describe(reference, network: Network, n: int) -> str:
    return (f"{n} samples each; reference: {reference['n']} train images ({os.path.basename(reference['path'])}); "
            f"weights {network.path} (sha256 {network.weights_sha256[:12]}...)")

