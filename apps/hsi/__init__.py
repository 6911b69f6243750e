"""hybrids.apps.hsi: hyperspectral imaging, starting with denoising (HSDT, ICCV 2023).

The pipeline: ``hybrids.datasets.hsi`` (readers and writers for .mat v5/v7.3, ENVI, .npy, .tif; the
SalinasA split; synthetic mixing scenes) -> ``noise`` (the QRNN3D / HSDT noise protocol) -> ``hsdt``
(the model) -> ``train`` / ``training`` (``hybrids hsi train-denoiser``) -> ``denoise`` (tiled
inference, ``hybrids hsi denoise``) -> ``report`` (held-out table and figure beside BM4D and
FastHyDe, ``hybrids hsi report``), with metrics in ``hybrids.evaluation.denoising``.
"""
