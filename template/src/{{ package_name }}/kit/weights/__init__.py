"""Pretrained weights from a local cache: fetched once where the hub is reachable, loaded offline
everywhere else, and recorded with every run that starts from them.

Managed by the copier-lightning template.
"""
