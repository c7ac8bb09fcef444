"""Lightning's chatter left out of every command's output. Managed by the copier-lightning template.

Every command that builds a Trainer (and `data verify`, `check`, `evaluate` do) printed "Seed set
to 42", "GPU available: False, used: False", "TPU available: ...", advertisement tips, notes on
the kit's own settings and
deprecation warnings that Lightning raises about its own use of torch and jsonargparse. None of
it is about the researcher's run: the seed and the devices are in record.json. Warnings and
errors about the researcher's code and settings are kept.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

# Lines Lightning logs at INFO that say nothing the kit does not say better ("Run '...' finished").
CHATTER_PREFIXES = (
    "Seed set to ",
    "GPU available: ",
    "TPU available: ",
    "HPU available: ",
    "💡 Tip: ",
    "`Trainer.fit` stopped: ",  # the kit prints how the run ended
    "`Trainer(limit_",  # the scratch Trainers of `check` and `find-lr` limit batches on purpose
    "`weights_only` was not set",
    "Restoring states from the checkpoint path at ",  # the kit names the checkpoint it uses
    "Loaded model weights from the checkpoint at ",
)
CHATTY_LOGGERS = (
    "lightning.fabric.utilities.seed",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
)
# Deprecations inside Lightning itself (its use of torch's pytree and jsonargparse options): the
# researcher can do nothing about them.
LIGHTNING_INTERNAL_DEPRECATIONS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*skip_none parameter was deprecated.*",
    # `test` restores weights only; the kit's callbacks are for `fit` and need not be there.
    r"(?s)Be aware that when using `ckpt_path`, callbacks used to create the checkpoint.*",
    # On a login node with SLURM installed, a local run is meant to be local (jobs go through `submit`).
    r"(?s)The `srun` command is available on your system but is not used.*",
    # peft asking transformers with a name transformers has since renamed.
    r".*`is_gradient_checkpointing` is deprecated.*",
)
# Hugging Face libraries' progress bars and load reports (a fine-tune's new head is "MISSING" from
# the base weights by design); their warnings and errors are kept. A value the researcher set wins.
HUGGING_FACE_QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = re.sub(r"^\[rank: \d+\] ", "", record.getMessage())  # under DDP: "[rank: 1] Seed set to 42"
        return not message.startswith(CHATTER_PREFIXES)


def quiet_lightning_chatter() -> None:
    """Install the filters (once; calling again changes nothing)."""
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropChatter) for existing in logger.filters):
            logger.addFilter(_DropChatter())
    for pattern in LIGHTNING_INTERNAL_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=pattern)
    researcher_chose = "TRANSFORMERS_VERBOSITY" in os.environ
    for name, value in HUGGING_FACE_QUIET.items():
        os.environ.setdefault(name, value)
    # Imported already (Lightning imports it), transformers has read its variable: tell it directly.
    if "transformers" in sys.modules and not researcher_chose:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
