"""Sanity checks, LR and batch-size finders, evaluation, sweeps, seeds and comparisons.

Managed by the copier-lightning template.
"""
