"""Sample-quality measures: how good are the samples a model draws (next to its bits/dim)?

    digits_quality.py   are generated digits digits? the demo's sample check (python -m vdm.metrics.digits_quality WORKDIR)
"""
