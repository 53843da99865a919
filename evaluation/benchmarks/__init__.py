"""The evaluation benchmarks: the paper's 15 in their real offline layouts, generic formats, demo sets.

Entry points live in ``evaluation.benchmarks.registry`` (BENCHMARKS, resolve_benchmarks, load_split...).
This package imports no heavy library at import time: torch, PIL, pandas, h5py are imported inside the
loaders.
"""
