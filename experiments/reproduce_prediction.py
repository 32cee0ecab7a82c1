"""eps vs x vs v prediction under the same continuous-time ELBO (the parameterizations of vdm.core.diffusion).

Run (2 cores, ~9 min; finished points are skipped):
  python -m experiments.reproduce_prediction
  python -m experiments.reproduce_prediction --size=paper [--slurm=prediction.sbatch]   # CIFAR-10

Trains configs/repro.py:prediction with the network predicting eps, x or v,
converted exactly to eps_hat, so the loss and its weighting are the same; 2
seeds each, equal step budgets. Writes results/prediction.md, .json and .png.
"""

from experiments import repro_common as rc

if __name__ == "__main__":
    args, config_arg, points, root = rc.parse_args("prediction", __doc__, "prediction")
    rc.compare_settings(
        args, "prediction", "ε vs x vs v prediction under the same ELBO",
        "python -m experiments.reproduce_prediction", config_arg, points, root, "model.prediction",
        "Digits, 16 channels × 2 blocks, continuous-time ELBO with learned endpoints; the prediction is converted "
        "to ε̂ exactly, so only the network's output parameterization differs (ε keeps the input skip).",
        "The paper trains ε-prediction. All three represent the same denoisers; they differ in how network errors "
        "reach ε̂: x-prediction gives ε̂ = (z − α x̂)/σ, multiplying errors by α/σ = exp(−γ/2) — about 48 at "
        "γ_0 ≈ −7.7, a time the log-SNR-linear ELBO weights as much as any other — and v-prediction gives ε̂ = σ z + α v̂, "
        "errors times α ≤ 1.")
