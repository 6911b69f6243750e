"""hybrids.shared_blocks: nn.Modules used by two or more apps (attention, transformer layers,
positional encodings, norms, conv/residual blocks for 1/2/3-D, FiLM).

Blocks depend on torch and ``hybrids.kernels`` only; they know nothing about files or training.
"""
