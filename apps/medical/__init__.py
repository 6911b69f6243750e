"""hybrids.apps.medical: medical image segmentation (NIfTI / DICOM volumes).

``cli.py`` holds the ``hybrids medical`` command group; ``evaluate`` scores folders of label
volumes with ``hybrids.evaluation.segmentation``. Volumes are read and written with
``hybrids.datasets.medical``.
"""
