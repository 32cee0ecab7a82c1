"""Fourier features on vs off on 8-bit data (paper Sec. 4 / Table 3: they matter for fine detail).

Run (2 cores, ~12 min; finished points are skipped):
  PYTHONPATH=. python experiments/reproduce_fourier.py
  PYTHONPATH=. python experiments/reproduce_fourier.py --size=paper [--slurm=fourier.sbatch]   # CIFAR-10

Trains configs/repro.py:fourier (16x16x3 8-bit patches of sklearn's two
photographs, V = 256) with and without the input Fourier features (base-2
frequencies 2^6, 2^7), 2 seeds each, equal step budgets. Writes
results/fourier.md, .json and .png.
"""

import repro_common as rc

if __name__ == "__main__":
    args, config_arg, points, root = rc.parse_args("fourier", __doc__, "fourier")
    rc.compare_settings(
        args, "fourier", "Fourier features on vs off, 8-bit photo patches",
        "PYTHONPATH=. python experiments/reproduce_fourier.py", config_arg, points, root, "model.fourier_features",
        "16×16×3 patches of sklearn's two photographs (V = 256), 16 channels × 2 blocks, equal step budgets.",
        "Paper (CIFAR-10, ablation in Sec. 5): without Fourier features the likelihood of 8-bit data is clearly "
        "worse, because the network cannot resolve the lowest bits of the input at high SNR.")
