"""Fourier features on vs off on 8-bit data (paper Sec. 4 / Table 3: they matter for fine detail).

Run (2 cores, ~12 min; finished points are skipped):
  python -m experiments.reproduce_fourier
  python -m experiments.reproduce_fourier --size=paper [--slurm=fourier.sbatch]   # CIFAR-10

Trains configs/repro.py:fourier (16x16x3 8-bit patches of sklearn's two
photographs, V = 256) with and without the input Fourier features (base-2
frequencies 2^6, 2^7), 2 seeds each, equal step budgets. Writes
results/fourier.md, .json and .png.
"""

from experiments import repro_common as rc

if __name__ == "__main__":
    args, config_arg, points, root = rc.parse_args("fourier", __doc__, "fourier")
    rc.compare_settings(
        args, "fourier", "Fourier features on vs off, 8-bit photo patches",
        "python -m experiments.reproduce_fourier", config_arg, points, root, "model.fourier_features",
        "16×16×3 patches of sklearn's two photographs (V = 256), 16 channels × 2 blocks, equal step budgets.",
        "Paper: on 8-bit data the Fourier features (sin, cos of 2^6·2π z and 2^7·2π z, the finest one with the "
        "period of one grey level) are what lets the network use the input's fine scale at high SNR, and they "
        "improve the final likelihood. These runs are short (400 steps of a 16-channel network); whether the "
        "order reverses with longer training is not measured here.")
