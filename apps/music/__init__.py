"""hybrids.apps.music: music source separation with Hybrid Transformer Demucs.

``htdemucs.py`` holds the model and its config (Rouard, Massa, Défossez, ICASSP 2023), ``bag.py``
the per-source bag of fine-tuned models, ``weights.py`` the official weights entries and the
reader of demucs ``.th`` packages, ``models.py`` the registrations (``music/htdemucs``,
``music/htdemucs_6s``, ``music/htdemucs_ft``).
"""
