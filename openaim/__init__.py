"""The roof: the `openaim` command and the pipeline graph over the stages (curation, training, evaluation).

Nothing below imports this package: shared/ is the foundation every stage stands on, the stages import
shared/ (and the stages they build on), and openaim/ imports them all (tests/test_import_graph.py).
"""
