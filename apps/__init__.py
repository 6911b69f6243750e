"""hybrids.apps: one vertical pipeline per domain (music, medical, dna, ...), plus the CLI.

Each app is a sub-package ``hybrids.apps.<app>`` that registers its models in ``models.py`` and
its command-line verbs in ``cli.py``; ``hybrids.apps.core`` holds what they share (registry,
configs, weights, checkpoints, CLI plumbing). Importing this package imports no app.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("hybrids")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
