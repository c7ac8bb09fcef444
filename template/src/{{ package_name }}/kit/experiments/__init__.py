"""Many runs of one project: sweeps and Optuna searches, their status and results, seeds and comparisons.

Managed by the copier-lightning template.
"""
