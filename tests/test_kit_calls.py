"""Per-batch callback hooks reach only the callbacks that implement them (kit/training/idle_hooks.py).

Lightning sends every hook to every callback; the kit marks the per-batch hooks a callback leaves
empty as absent, which Lightning skips. Checked on a real `fit` of the example (which hooks were
dispatched, and to whom) and on Lightning's own callbacks (state keys unchanged, so checkpoints
written before still restore their callback states).
"""

from __future__ import annotations

import json

from template_dev import run

# Run inside the example's venv: record every callback hook Lightning dispatches during a short fit.
DISPATCH_PROBE = """
import json, sys
from digits_mlp.kit.training import no_profiler
from digits_mlp.kit.training.lightning_cli import run_lightning_cli

dispatched = set()

def recording(self, action_name):
    if action_name.startswith("[Callback]"):
        dispatched.add(action_name.removeprefix("[Callback]"))
    return no_profiler._NOTHING_TO_RECORD

no_profiler.NoProfiler.profile = recording
code = run_lightning_cli(["fit", "--run_name", "dispatch-probe", "--trainer.max_epochs=2",
                          "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2"])
print("DISPATCHED", json.dumps(sorted(dispatched)), code)
"""


def test_a_fit_sends_per_batch_hooks_only_to_callbacks_that_implement_them(example_project, tmp_path) -> None:
    from lightning.pytorch import Callback

    project, venv = example_project
    done = run([str(venv.python), "-c", DISPATCH_PROBE], cwd=project, env={"RUNS_DIR": str(tmp_path)})
    line = next(line for line in done.stdout.splitlines() if line.startswith("DISPATCHED "))
    dispatched, code = json.loads(line.split(" ", 1)[1].rsplit(" ", 1)[0]), line.rsplit(" ", 1)[1]
    assert code == "0", done.stdout[-3000:]
    per_batch = set()
    for name in dispatched:
        callback, hook = name.rsplit(".", 1)
        if hook.endswith(("batch_start", "batch_end", "backward", "optimizer_step", "zero_grad")):
            per_batch.add((callback.split("{")[0], hook))
    assert per_batch == {
        ("ProgressLines", "on_train_batch_end"),
        ("RollingCheckpoint", "on_train_batch_end"),
        ("ModelCheckpoint", "on_train_batch_end"),
    }, sorted(per_batch)
    # The other hooks still reach every callback: early stopping decides at the epoch's validation end.
    assert any(name.startswith("EarlyStopping") and name.endswith(".on_validation_end") for name in dispatched)
    assert Callback.on_train_batch_end is not None  # Lightning's class itself is untouched


def test_lightning_callbacks_keep_their_state_keys_and_implemented_hooks(example_package) -> None:
    from digits_mlp.kit.training.idle_hooks import PER_BATCH_HOOKS, skip_idle_batch_hooks
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    stopping, best = EarlyStopping(monitor="val/acc", mode="max"), ModelCheckpoint(monitor="val/acc", mode="max")
    keys = (stopping.state_key, best.state_key)
    skip_idle_batch_hooks([stopping, best])
    assert (stopping.state_key, best.state_key) == keys  # checkpoints' callback states load as before
    assert all(getattr(stopping, hook) is None for hook in PER_BATCH_HOOKS)
    assert callable(best.on_train_batch_end)  # ModelCheckpoint's every-n-steps check still runs
    assert best.on_before_backward is None
    assert callable(stopping.on_validation_end)  # not a per-batch hook: untouched
