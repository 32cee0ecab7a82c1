"""What a run leaves in its workdir: metrics (JSONL + TensorBoard), PNG grids and plots, metadata."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import subprocess
import time

import numpy as np

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "ml-collections", "numpy")


def run_metadata() -> dict:
    """Package versions, the git commit of the code (if any) and the time."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"packages": versions, "git_commit": commit, "git_dirty": dirty, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_json(path: str, remedy: str, kind=dict):
    """The JSON object in `path`; WorkdirError naming the file, what is wrong and `remedy` if it is cut short,
    garbled, empty or not a `kind` (a half-copied or half-written file: disk full, an interrupted rsync)."""
    from vdm.errors import WorkdirError

    try:
        with open(path, "rb") as f:
            raw = f.read()
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        what = "empty" if not raw.strip() else f"not valid JSON ({' '.join(str(e).split())[:80]})"
        raise WorkdirError(f"{path} is damaged: {what}; {remedy}") from None
    if not isinstance(value, kind):
        raise WorkdirError(f"{path} is damaged: a JSON {type(value).__name__}, not the {kind.__name__} vdm wrote; "
                           f"{remedy}")
    return value


def write_json(path, obj):
    """Writes JSON atomically (temporary file + rename): a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_to_builtin)
        f.write("\n")
    os.replace(tmp, path)


def _to_builtin(x):
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


_JSON_ROW_CHARS = re.compile(rb'^\{"step": [{}\[\]":,.\-+0-9A-Za-z_ ]*$')


def _is_torn_row(line: bytes, longest: int) -> bool:
    """A row cut short while it was appended: the start of a row, in the characters rows are made of, no longer
    than the rows before it (garbled bytes or a merged run of lines are none of these)."""
    return len(line) <= max(longest, 1) and bool(_JSON_ROW_CHARS.match(line))


class MetricsWriter:
    """Appends {"step", "split", ...scalars} lines to metrics.jsonl and mirrors them to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb_dir = os.path.join(workdir, "tensorboard")
        self._tb = None  # opened at the first write: reading the log (a resume) writes nothing

    @property
    def tensorboard(self):
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(self._tb_dir)
        return self._tb

    def _rows(self):
        """The parsed rows of metrics.jsonl. A last line cut short (a kill while it was appended: the start of a
        row and no newline) is dropped; any other damaged line is a WorkdirError naming the line (metrics.jsonl is the run's log: nothing else
        is lost by removing it)."""
        from vdm.errors import WorkdirError

        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError):
                if number == len(lines) and _is_torn_row(line, max(map(len, lines[:-1]), default=0)):
                    continue  # the last line, cut short by a kill while it was appended: the run resumes past it
                raise WorkdirError(f"{self.path} is damaged at line {number} of {len(lines)}: it is only the run's "
                                   f"log: remove that line (or the file) and rerun the same command") from None
            rows.append(row)
        return rows

    def last_value(self, split: str, key: str, default=None):
        """The newest value of `key` among rows of `split` in metrics.jsonl (default if none)."""
        values = [row[key] for row in self._rows() if row.get("split") == split and key in row]
        return values[-1] if values else default

    def rewind(self, step: int) -> None:
        """On resume: drops rows after `step` (and a line cut short by a kill) from metrics.jsonl."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = [json.dumps(row) + "\n" for row in self._rows() if row.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, split: str, scalars: dict):
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in scalars.items():
            self.tensorboard.add_scalar(f"{split}/{k}", float(v), int(step))
        self.tensorboard.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()


GRID_MAX_IMAGES = 100  # a grid shows at most 10 x 10 samples; samples.npz keeps them all
GRID_MIN_PIXELS = 64  # small images are upscaled (nearest neighbour) to at least this many pixels a side
GRID_SEPARATOR = 2  # pixels between images


def image_grid(images, vocab_size: int, ncols: int | None = None, scale: int = 1, pad: int = GRID_SEPARATOR,
               background: int = 128) -> np.ndarray:
    """[N, H, W, C] integers in {0..V-1} -> one uint8 picture [rows*(sH+pad)+pad, cols*(sW+pad)+pad, C].

    Each image is scaled to grey levels 0..255, repeated `scale` times along both
    axes (nearest neighbour), and placed on a `background` canvas `pad` pixels apart (mid grey:
    distinct from both black background and white strokes of the images).
    """
    images = np.asarray(images)
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    scaled = np.round(images.astype(np.float64) * 255.0 / (vocab_size - 1)).astype(np.uint8)
    scaled = scaled.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), background, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = scaled[i]
    return grid


def grid_scale(image_shape) -> int:
    """The nearest-neighbour factor that makes an [H, W, ...] image at least GRID_MIN_PIXELS a side (8x8 -> 8)."""
    return max(1, math.ceil(GRID_MIN_PIXELS / max(image_shape[0], image_shape[1])))


def save_image_grid(images, vocab_size: int, path: str, ncols: int | None = None) -> str:
    """Saves the first GRID_MAX_IMAGES integer images [N, H, W, C] as one PNG, each upscaled to be seen.

    Returns the path. The picture is at most 10 x 10 images (ncols defaults to
    ceil(sqrt(n))), each at least GRID_MIN_PIXELS a side, GRID_SEPARATOR pixels apart.
    """
    from PIL import Image

    images = np.asarray(images)[:GRID_MAX_IMAGES]
    grid = image_grid(images, vocab_size, ncols, scale=grid_scale(images.shape[1:]))
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def plot_schedule(gamma_fn, path: str, title: str = ""):
    """PNG plot of log-SNR(t) = -gamma(t) on t in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vdm.core.diffusion import log_snr as log_snr_of

    t = np.linspace(0.0, 1.0, 201, dtype=np.float32)
    log_snr = np.asarray(log_snr_of(gamma_fn(t))).reshape(len(t), -1)  # [201, 1], or [201, D] per dimension
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if log_snr.shape[1] > 1:  # one schedule per dimension: their range, a few of them and their mean
        ax.fill_between(t, log_snr.min(1), log_snr.max(1), alpha=0.2, label=f"range over {log_snr.shape[1]} dims")
        ax.plot(t, log_snr[:, :: max(1, log_snr.shape[1] // 6)], lw=0.6, alpha=0.7)
        ax.plot(t, log_snr.mean(1), color="k", lw=1.5, label="mean")
        ax.legend(fontsize=7)
    else:
        ax.plot(t, log_snr)
    ax.set_xlabel("t")
    ax.set_ylabel("log SNR(t) = -gamma(t)")
    ax.set_title(title or f"log-SNR: [{log_snr[0].mean():.2f}, {log_snr[-1].mean():.2f}]")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
