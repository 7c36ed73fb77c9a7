"""Benchmarks: what the gateway costs, against the floor a Python proxy can reach.

Not tests: ``make bench`` (``python -m bench.run``) prints figures and rewrites
``BENCHMARKS.md``; every ratio compares targets measured in the same run.
"""
