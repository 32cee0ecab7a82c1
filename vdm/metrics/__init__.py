"""Sample-quality measures: how good are the samples a model draws (next to its bits/dim)?

    digits_quality.py     are generated digits digits? the demo's sample check (python -m vdm.metrics.digits_quality WORKDIR)
    feature_distances.py  Fréchet distance (FID's formula) and KID between two sets of features [N, F]
    digits_features.py    the features of FD-digits / KID-digits: a small digits classifier's penultimate layer
    inception.py          FID's Inception-v3 (TF's graph as pytorch-fid ports it) in Flax: pool features, logits
    inception_weights.py  its weights: pytorch-fid's .pth checked and converted once to .npz; stand-in weights
    inception_metrics.py  Inception Score, precision / recall (k-NN balls) on those features
"""
