"""hybrids.apps.dna: DNA language models (HybriDNA) and their baselines."""
