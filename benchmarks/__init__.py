"""The load benchmark of dbscope: variants, harness, overload scenario and profiling.

Run everything with ``make bench`` (see docs/benchmarks.md); ``python benchmarks/run.py
--smoke`` runs each variant for a few seconds, as the test suite does.
"""
