"""Attention kernels: the SDPA dispatcher (fast path beside an explicit reference)."""

from hybrids.kernels.attention.sdpa import attention as attention
