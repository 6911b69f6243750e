"""hybrids.shared_blocks: nn.Modules used by two or more apps (attention, transformer layers,
positional encodings, norms, conv/residual blocks for 1/2/3-D, FiLM).

Each layer is written once: :mod:`~hybrids.shared_blocks.attention` (every multi-head attention, with
projection layouts that keep published key names), :mod:`~hybrids.shared_blocks.drop_path` (stochastic
depth) and :mod:`~hybrids.shared_blocks.factories` (conv / pool / norm / activation layers by
``spatial_dims`` and the argument checks) are what the other blocks build on.

Blocks depend on torch and ``hybrids.kernels`` only; they know nothing about files or training.
"""
