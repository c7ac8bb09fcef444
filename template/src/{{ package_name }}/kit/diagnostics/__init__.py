"""Before a long run: is the model and data right (`check`), and how fast can it go (`find-lr`,
`find-batch-size`, `loader`).

Managed by the copier-lightning template.
"""
