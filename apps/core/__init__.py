"""hybrids.apps.core: what every app shares: the model registry, dataclass configs, the weights
resolver, checkpoint I/O, user-facing errors and CLI plumbing."""
