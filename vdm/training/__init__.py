"""Training and evaluating a VDM (`vdm.model`) in a workdir: the steps, the loop and what a run writes.

    steps.py        the jitted train step (optimizer, EMA, non-finite guard) and eval step
    optim.py        AdamW, learning-rate schedules, clipping, parameter EMA
    run.py          Run: what every mode needs (config, model, optimizer, mesh, keys, test split, states)
    loop.py         train_and_evaluate: the training loop, its periodic actions through every(n, step)
    evaluation.py   test bits/dim over a split, results.json, --mode=eval and --mode=likelihood
    generation.py   sample(): images from any sampler; the run's pictures, --mode=sample
    workdirs.py     config.json / results.json, reruns of another config, load_run()
    checkpoint.py   orbax checkpoints of the train state and the data position
    distributed.py  data parallelism: one `data` mesh axis over every device and host
    preemption.py   SIGTERM / SIGINT: finish the step, checkpoint, exit 75
    outputs.py      metrics (JSONL + TensorBoard), sample grids and plots, run metadata
    classifier.py   training the noise-conditional classifier of classifier guidance
    official_params.py  checkpoints of the official VDM code: read, parameters mapped onto ours
    official.py     ... written as a workdir (python -m vdm.import_official)
"""
