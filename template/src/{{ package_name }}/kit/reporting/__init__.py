"""reproduce (artifacts on doit), the README's artifact table, dataset and model cards.

Managed by the copier-lightning template.
"""
