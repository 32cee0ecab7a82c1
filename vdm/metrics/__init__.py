"""Sample-quality measures: how good are the samples a model draws (next to its bits/dim)?

    digits_quality.py     are generated digits digits? the demo's sample check (python -m vdm.metrics.digits_quality WORKDIR)
    feature_distances.py  Fréchet distance (FID's formula) and KID between two sets of features [N, F]
    digits_features.py    the features of FD-digits / KID-digits: a small digits classifier's penultimate layer
"""
