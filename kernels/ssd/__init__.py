"""Mamba2's structured state-space duality (SSD) scan: sequential reference, chunked fast path,
single-step decoding."""
