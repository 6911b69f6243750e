"""hybrids.evaluation: metrics, benchmark runners and report rendering.

Never imports ``hybrids.apps``.
"""
