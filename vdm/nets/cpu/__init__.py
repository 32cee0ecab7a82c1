"""CPU-tuned forms of the network's operations: the same functions and parameters, faster on XLA:CPU.

    attention.py   softmax attention over blocks of queries (model.fast_attention)
    norm.py        GroupNorm with per-channel statistics first (model.fast_norm)
    conv.py        a 3x3 convolution whose gradient stays fast inside loops (model.loop_friendly_conv)
    prng.py        threefry with unrolled rounds for dropout masks (model.fast_dropout_rng)

Each is tested to compute what the plain flax / JAX form computes (float32
rounding apart), so a checkpoint trained with them loads without them.
"""
