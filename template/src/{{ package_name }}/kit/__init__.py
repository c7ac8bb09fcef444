"""Training infrastructure managed by the copier-lightning template.

Everything in this folder is owned by the template and improved by `copier update`: resumable
runs, atomic checkpoints, exact continuation, run records. Put your own code in `model.py`,
`data.py` and new modules beside them; edits here may conflict with later template updates.
"""
