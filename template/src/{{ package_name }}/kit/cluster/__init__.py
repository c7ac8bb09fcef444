"""SLURM jobs, the GPU memory profile that picks a MIG slice, supervise.

Managed by the copier-lightning template.
"""
