"""PDE surrogates: a Kolmogorov-flow solver's data, FactFormer, IFactFormer-m and FNO (``hybrids pde``)."""
