"""What runs inside `fit`: the LightningCLI, resumable loader, random states, rolling checkpoints, DDP.

Managed by the copier-lightning template.
"""
