"""hybrids.datasets: file formats, dataset layouts and simulators.

Never imports ``hybrids.apps``.
"""
