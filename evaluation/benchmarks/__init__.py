"""The evaluation benchmarks: the paper's 15 in their real offline layouts, generic formats, demo sets.

Entry points live in ``evaluation.benchmarks.registry`` (BENCHMARKS, resolve_benchmarks, load_split...);
each spec's ``loader`` is the function that reads its layout (in generic, torchvision_sets, wilds, ...).
"""
