"""Benchmark runners: each prints reference vs fast vs peer, measured in the same run."""
