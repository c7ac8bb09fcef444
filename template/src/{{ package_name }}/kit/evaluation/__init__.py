"""A trained model measured: predictions on a split once, every metric derived from them (`evaluate`).

Managed by the copier-lightning template.
"""
