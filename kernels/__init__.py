"""hybrids.kernels: functional compute kernels.

Every op has a readable pure-torch ``impl="reference"`` (the source of truth in tests) beside a
fast path that is the default and matches it within stated tolerances. Only torch is imported at
module import time; optional accelerators (Triton, mamba_ssm) are imported lazily on CUDA.
"""
