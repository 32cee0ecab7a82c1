"""CPU-tuned forms of the network's operations: the same functions and parameters, faster on XLA:CPU.

    attention.py    softmax attention over blocks of queries
    norm.py         GroupNorm with per-channel statistics first
    conv.py         a 3x3 convolution whose gradient stays fast inside loops (nn.scan)
    matmul_conv.py  a bfloat16 3x3 convolution as float32-accumulating matmuls, forward and gradients
    dropout.py      dropout with its mask named, kept by recomputation instead of redrawn

`model.impl = cpu` (the default on the CPU backend) selects them together
(`vdm.nets.ops`). Each is tested to compute what the plain flax / JAX form
computes (float32 rounding apart), so a checkpoint trained with them loads
without them.
"""
