"""Mamba2's structured state-space duality (SSD) scan: sequential reference, chunked fast path,
single-step decoding."""

from hybrids.kernels.ssd.chunked import DEFAULT_CHUNK_SIZE, ssd_scan_chunked
from hybrids.kernels.ssd.reference import segsum, ssd_scan_quadratic, ssd_scan_reference
from hybrids.kernels.ssd.scan import ssd_scan
from hybrids.kernels.ssd.step import ssd_step

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "segsum",
    "ssd_scan",
    "ssd_scan_chunked",
    "ssd_scan_quadratic",
    "ssd_scan_reference",
    "ssd_step",
]
