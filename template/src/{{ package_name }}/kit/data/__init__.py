"""Raw-data checksums (the `data` command) and the preprocessing cache.

Managed by the copier-lightning template.
"""
