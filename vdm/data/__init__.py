"""Data: which datasets exist and how they reach the training loop.

    datasets.py   the dataset registry (DATASETS) and tfds sources; bundled digits / photo-patch builders
    pipeline.py   grain input pipeline: per-process shards of global batches, resumable, checked against the config
"""
