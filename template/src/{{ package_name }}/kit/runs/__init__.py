"""A run on disk: its directory, manifest and record, checkpoint files and checksums, atomic writes.

Managed by the copier-lightning template.
"""
