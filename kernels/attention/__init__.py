"""Attention kernels: the SDPA dispatcher (fast path beside an explicit reference)."""
