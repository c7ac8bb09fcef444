"""LightningCLI with runs that resume by themselves. Managed by the copier-lightning template.

`fit` puts everything a run makes into `runs/<run_name>/` and, when that directory already holds
checkpoints, resumes from the newest readable one. The run name is `--run_name` or, when left out,
derived from the config file name and a hash of the config files and options (kit/runs/identity.py),
so re-running the same command finds the same run. `validate`, `test` and `predict` use the same name to find the run's
best checkpoint, unless `--ckpt_path` is given.

This module is the CLI's lifecycle: the options it adds, the run it chooses, the callbacks and
plugins `fit` gets, the resume, the start and end records, and the exit code. Building the model
and data without running anything is project_loading.py's; the `checkpointing` and
`early_stopping` options are fit_policies.py's.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment
from typing_extensions import override

from ..base.project_package import CONSOLE_SCRIPT, KIT
from ..data.raw_data import RawDataChangedError, raw_data_differences, refuse_changed_raw_data
from ..data.resumable_loader import WorldSizeChangedError, check_process_count
from ..data.shards import ShardError
from ..runs.checkpoint_files import (
    MissingTrainedRun,
    checkpoint_to_use,
    newest_checkpoint,
    refuse_unreadable_checkpoint,
)
from ..runs.checkpoint_io import AtomicCheckpointIO
from ..runs.code_state import CodeChangedError, code_differences, code_files, refuse_changed_code
from ..runs.directory import (
    BEST_CHECKPOINT_FILENAME,
    DIVERGED_EXIT_CODE,
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    REQUEUE_EXIT_CODE,
    ConfigChangedError,
    DamagedRunFile,
    RunDirectory,
)
from ..runs.identity import (
    AUTO,
    DEFAULT_CONFIG,
    PLACEMENT_KEYS,
    RUN_CONTROL_KEYS,
    SUBCOMMAND_ONLY_KEYS,
    SUBCOMMANDS,
    RunNameError,
    given_config_files,
    given_run_name,
    run_name,
)
from ..runs.lease import RunHeldError, RunLease, RunTakenOver, release_held_leases
from ..runs.record import (
    end_start,
    note_changed_code,
    note_changed_raw_data,
    note_parameters,
    note_pretrained,
    note_started_from,
    start_record,
)
from ..runs.root import RunsRoot, find_run_by_config
from ..runs.storage_errors import storage_error_message
from ..weights.adapters import parameter_summary
from ..weights.cache import WeightsError, refuse_other_base_weights, resolved_sources, unloadable_weights_message
from .distributed import (
    DistributedPolicy,
    PeerGuard,
    apply_collective_timeout,
    let_the_launched_processes_end,
    lost_peer_message,
)
from .divergence import TrainingDiverged
from .fit_policies import (
    CheckpointPolicy,
    CheckpointsRequired,
    EarlyStoppingPolicy,
    NothingToTrain,
    PrecisionUnavailable,
    automatic_precision,
    better_direction,
    refuse_a_fit_that_trains_nothing,
    refuse_a_fit_without_checkpoints,
    refuse_a_precision_this_machine_lacks,
)
from .idle_hooks import skip_idle_batch_hooks
from .monitor_choice import described, monitor_at_start
from .no_profiler import NoProfiler
from .option_errors import invalid_yaml_config, one_line
from .quiet_output import quiet_lightning_chatter
from .random_states import RandomStateCheckpoint
from .refused_inputs import (
    checkpoint_mismatch_message,
    refused_data_message,
    refused_optimizer_message,
    refused_settings_message,
    refused_trainer_message,
)
from .rolling_checkpoint import RollingCheckpoint
from .run_bookkeeping import MissingMonitoredMetric, RunBookkeeping
from .sharded_training import (
    ShardingRefused,
    refuse_a_model_it_cannot_shard,
    refuse_sharded_checkpoint_without_sharding,
    register_sharded_training,
)
from .trial_pruning import active_trial_pruning

# argparse takes an unambiguous prefix of an option by default: `--trainer.max_epoch=3` would set
# max_epochs and a typo would train. Options must be spelled out.
NO_ABBREVIATIONS = {"allow_abbrev": False}


# LightningCLI warns when `args` and sys.argv are both set; here `args` comes from sys.argv itself.
warnings.filterwarnings("ignore", message=r".*args parameter is intended to run from within Python.*")
quiet_lightning_chatter()


class StoppedForRequeue(Exception):
    """`fit` stopped on the requeue signal after writing its checkpoint."""


class BadSettingError(ValueError):
    """A config value that parses but cannot work (e.g. a checkpoint every 0 steps)."""


class RunNotFinished(Exception):
    """`fit` returned without a finished run and without a stop signal (exit code 1, never 0)."""


class RunAlreadyFinished(Exception):
    """`fit` was asked to continue a run that has finished."""


class ProjectCLI(LightningCLI):
    def __init__(self, *args, only_subcommand: str | None = None, **kwargs) -> None:
        self.only_subcommand = only_subcommand
        self._precision_note: str | None = None  # said when a resumed run keeps a precision this machine would not pick
        super().__init__(*args, **kwargs)

    @override
    def subcommands(self) -> dict[str, set[str]]:
        """Only the subcommand being run gets a parser: Lightning builds one for each of the four, and
        each is a walk of the trainer's, model's and data's signatures (bench/subcommand_parsers.py)."""
        every = LightningCLI.subcommands()
        return {self.only_subcommand: every[self.only_subcommand]} if self.only_subcommand else every

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Name of the run directory under runs/ (default: config name + hash of the config).",
        )
        parser.add_argument(
            "--allow_changed_data",
            type=bool,
            default=False,
            help="Train even if the raw data differs from data/raw.sha256 (the difference goes into record.json).",
        )
        parser.add_argument(
            "--allow_changed_code",
            type=bool,
            default=False,
            help="Continue a run whose code (src/, but the kit) differs from the code it was started or "
            "submitted with (the difference goes into record.json).",
        )
        parser.add_class_arguments(CheckpointPolicy, "checkpointing")
        parser.add_class_arguments(EarlyStoppingPolicy, "early_stopping")
        parser.add_class_arguments(DistributedPolicy, "distributed")

    # -- choosing the run -----------------------------------------------------------------------
    def _config_text(self, config: Namespace) -> str:
        """The resolved config without the keys that only say which run to use."""
        config = config.clone()
        for key in RUN_CONTROL_KEYS + SUBCOMMAND_ONLY_KEYS + tuple(f"trainer.{k}" for k in PLACEMENT_KEYS):
            if key in config:
                del config[key]
        return self._parser(self.subcommand).dump(config, skip_validation=True)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self.given_args = list(args) if args is not None else sys.argv[1:]  # what names the run
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        given = self.config[subcommand].get("ckpt_path") if subcommand else None
        if given and Path(given).is_file():  # Lightning loads it next, for its hyperparameters: a file that is
            refuse_unreadable_checkpoint(Path(given))  # no checkpoint would end there in torch.load's traceback

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.config_text = self._config_text(config)
        self.run = self._choose_run()
        self.lease = RunLease(self.run.path)  # taken by rank 0 in before_fit, before anything is written
        if self.subcommand is None:  # run=False: building the objects only (tests, check, evaluate)
            return
        if self.subcommand == "fit" and not config.trainer.get("fast_dev_run"):
            self._prepare_fit_run(config)
        elif self.subcommand != "fit":
            # Evaluations print their metrics; they do not add log files to the training run.
            config.trainer.logger = False
            config.trainer.default_root_dir = str(self.run.path)

    def _choose_run(self) -> RunDirectory:
        root = RunsRoot.current()
        run = root.run(run_name(self.given_args, DEFAULT_CONFIG))
        if run.path.exists() or given_run_name(self.given_args):
            return run
        earlier = find_run_by_config(root.path, run.name, self.config_text)
        if earlier is None:
            return run
        if _is_first_process():
            print(
                f"Run '{earlier.name}': the same experiment as this command (its name was derived from an earlier "
                f"wording of the config files); continuing it."
            )
        return earlier

    def _prepare_fit_run(self, config: Namespace) -> None:
        refuse_a_fit_that_trains_nothing(config.trainer)
        refuse_a_fit_without_checkpoints(config.trainer)
        run = self.run
        run.check_same_config(self.config_text)
        if run.is_finished():
            raise RunAlreadyFinished(
                f"Run '{run.name}' is complete: its checkpoints are in {run.checkpoint_dir} "
                f"(list them with `{CONSOLE_SCRIPT} runs`). To train again, start a fresh run: "
                f"add --run_name NEW_NAME, or move {run.path} away."
            )
        config.trainer.default_root_dir = str(run.path)
        for logger in _as_list(config.trainer.get("logger")):
            _point_logger_at_run(logger, run)

    # -- the trainer gets the crash-safety callbacks -------------------------------------------
    @override
    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer_config = self.config_init[self.subcommand]["trainer"] if self.subcommand else {}
        if self.subcommand and trainer_config.get("precision") is None:
            kwargs["precision"] = self._automatic_precision(trainer_config.get("accelerator"))
        if trainer_config.get("profiler") is None:
            kwargs["profiler"] = NoProfiler()
        if trainer_config.get("enable_model_summary") is None:
            # Lightning's 13-line table on every start: `fit` says the model in one line instead (before_fit).
            kwargs["enable_model_summary"] = False
        if self.subcommand != "fit":
            return self._prepared(**kwargs)
        policy = self._policy
        # "auto" follows what the run chose at its first validation; a new run chooses at its own (on_chosen).
        metric, mode = _refusing_bad_settings(
            "checkpointing", monitor_at_start, policy.monitor, policy.mode, self.run.chosen_monitor()
        )
        self._monitor = {"metric": metric, "mode": mode}
        checkpoint_dir = self.run.checkpoint_dir
        callbacks = [
            # first: it checks (or, for "auto", chooses) the metric before early stopping reads it
            RunBookkeeping(self.run, metric, on_chosen=self._follow_chosen_monitor),
            PeerGuard(),
            RandomStateCheckpoint(),
            _refusing_bad_settings(
                "checkpointing", RollingCheckpoint, checkpoint_dir, policy.every_n_steps, policy.every_n_minutes
            ),
        ]
        if metric != AUTO:
            callbacks = _with_callbacks_following(callbacks, self._callbacks_following(metric, mode))
        pruning = active_trial_pruning(metric)  # only while an Optuna search with a pruner trains a trial
        if pruning is not None:
            callbacks.append(pruning)
        plugins = _as_list(trainer_config.get("plugins"))
        plugins.append(
            AtomicCheckpointIO(
                ledger=self.run,
                keep_replaced_as={LAST_CHECKPOINT: PREVIOUS_CHECKPOINT},
                before_write=self.lease.confirm,  # a writer whose lease was taken over writes nothing more
            )
        )
        if SLURMEnvironment.detect():
            # Lightning's own requeue saves inside the signal handler and prefers stale hpc_ckpt files;
            # RollingCheckpoint handles the signal instead, at a batch boundary.
            plugins.append(SLURMEnvironment(auto_requeue=False))
        kwargs["plugins"] = plugins
        kwargs["callbacks"] = _as_list(trainer_config.get("callbacks")) + callbacks
        return self._prepared(**kwargs)

    def _prepared(self, **kwargs) -> Trainer:
        """The trainer, built with the collective timeout set and with idle per-batch hooks skipped (idle_hooks.py)."""
        if self.subcommand:
            policy: DistributedPolicy = self.config_init[self.subcommand]["distributed"]
            register_sharded_training()  # the name `fsdp2`, before the timeout is added to every such name
            _refusing_bad_settings("distributed", apply_collective_timeout, policy.timeout_minutes)
        trainer = super().instantiate_trainer(**kwargs)
        skip_idle_batch_hooks(trainer.callbacks)
        return trainer

    @property
    def _policy(self) -> CheckpointPolicy:
        return self.config_init[self.subcommand]["checkpointing"]

    def _callbacks_following(self, metric: str | None, mode: str | None) -> list[Callback]:
        """The best `save_top_k` checkpoints and early stopping by `metric` (none without one)."""
        if metric is None:  # a model without a validation metric has no "best"
            return []
        policy, stopping = self._policy, self.config_init["fit"]["early_stopping"]
        best = ModelCheckpoint(
            dirpath=self.run.checkpoint_dir,
            filename=BEST_CHECKPOINT_FILENAME,
            auto_insert_metric_name=False,
            monitor=metric,
            mode=mode,
            save_top_k=policy.save_top_k,
            save_last=False,
            enable_version_counter=False,
        )
        if stopping.patience is None:
            return [best]
        stopper = EarlyStopping(monitor=metric, mode=mode, patience=stopping.patience, min_delta=stopping.min_delta)
        return [best, stopper]

    def _follow_chosen_monitor(self, trainer: Trainer, metric: str | None) -> None:
        """At the first validation of a new "auto" run (every process, the same `metric`): the best-k
        checkpoints and early stopping start following it, and the manifest records it for later starts."""
        mode = better_direction(metric) if metric else None
        self._monitor = {"metric": metric, "mode": mode}
        added = self._callbacks_following(metric, mode)
        for callback in added:
            callback.setup(trainer, trainer.lightning_module, stage="fit")
        skip_idle_batch_hooks(added)
        trainer.callbacks = _with_callbacks_following(trainer.callbacks, added)
        active_trial_pruning(metric)  # a pruned search's trial reports the chosen metric
        if trainer.is_global_zero:
            self.run.note_chosen_monitor(metric, mode)
            if metric is not None:
                print(
                    f"Run '{self.run.name}': checkpoints and early stopping follow {described(metric, mode)}, "
                    f"chosen from what validation logs (checkpointing.monitor: auto)."
                )
            else:
                self._say_no_monitored_metric(
                    "validation logs no metric" if trainer.enable_validation else "validation does not run"
                )

    def _automatic_precision(self, accelerator: str | None) -> str:
        """The kit's choice for this machine; a run that has started keeps the precision it started in.

        A job requeued onto another kind of GPU (bf16 on the first, none on the next) or a run resumed on a
        CPU would otherwise go on in other arithmetic, with no loss scaler state for fp16: a silent change
        half-way. Every process reads the same manifest, so all choose alike.
        """
        here = automatic_precision(accelerator)
        kept = self.run.kept_precision() if self.subcommand == "fit" else None
        if kept is None or kept == here:
            return here
        refuse_a_precision_this_machine_lacks(self.run.name, kept, accelerator)
        self._precision_note = (
            f"Run '{self.run.name}': training in {kept}, the precision it started in "
            f"(on this machine a new run would train in {here})."
        )
        return kept

    # -- resume ---------------------------------------------------------------------------------
    def before_fit(self) -> None:
        """Pick the checkpoint to resume from (every rank, the same one) and record the start (rank 0 only)."""
        if self.trainer.fast_dev_run:
            return
        lead = self.trainer.is_global_zero  # under DDP every process runs this; one records and prints
        say = print if lead else _silent
        refuse_a_model_it_cannot_shard(self.model, self.trainer.strategy)
        # Every process checks its base weights (it read them itself): under srun all refuse together.
        pretrained = self._check_pretrained()  # the base weights the run started from, or refused
        if lead:
            took_over = self.lease.acquire()  # one writer per run: refused here if another process holds it
            if took_over:
                print(took_over)
            code, changed_code = self._check_code()  # the code the run was started with, or refused
        fit_kwargs = self.config_init["fit"]
        # Every process reads the same files and so picks the same one; only rank 0 moves damaged ones aside.
        resume_from = newest_checkpoint(
            self.run.checkpoint_dir,
            move_unreadable=lead,
            is_intact=lambda info: self.run.checksum_verdict(info.path, info.global_step),
        )
        starting_point = fit_kwargs.get("ckpt_path") if resume_from is None else None
        if starting_point:  # `--ckpt_path` starts a run; re-run after a stop, the run goes on from its own
            given = checkpoint_to_use(self.run, starting_point, "start from", one_file=False)  # it must exist
            refuse_sharded_checkpoint_without_sharding(given, self.trainer.strategy)
            # A run trained for longer starts from the old run's final.ckpt: that one's end is not this run's.
            next(c for c in self.trainer.callbacks if isinstance(c, RollingCheckpoint)).starts_another_run = True
        if resume_from is not None:  # before anything is written: a refusal changes nothing
            refuse_sharded_checkpoint_without_sharding(resume_from.path, self.trainer.strategy)
            for loader_state in resume_from.loader_states:
                check_process_count(loader_state, self.trainer.world_size)
        if lead:
            # Rank 0 alone: it fetches missing raw files, and under DDP it runs before the others start.
            # All of it before the run is marked running: a refusal leaves no run that looks alive.
            with _missing_data_explained():
                changed_data = raw_data_differences(self.datamodule)
                fingerprint = getattr(self.datamodule, "data_fingerprint", None)
                data_fingerprint = fingerprint() if fingerprint else None
            if not self.config["fit"].get("allow_changed_data"):
                refuse_changed_raw_data(changed_data)
            elif changed_data:
                print("Training on raw data that differs from data/raw.sha256 (--allow_changed_data):")
                print("\n".join(f"  {problem}" for problem in changed_data))
            self._record_start(changed_data, data_fingerprint, code, changed_code, pretrained)
            if starting_point:
                note_started_from(self.run.path, Path(starting_point))
        if starting_point:
            say(f"Run '{self.run.name}': starting from the given checkpoint {starting_point}")
        elif resume_from is None:
            say(f"Run '{self.run.name}': new run in {self.run.path}")
        else:
            # Loggers keep appending to the run's files; Lightning warns about a non-empty log dir.
            warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
            fit_kwargs["ckpt_path"] = str(resume_from.path)
            say(  # the epoch counted from 1, as the progress lines count it
                f"Run '{self.run.name}': resuming from {resume_from.path.name} "
                f"(epoch {resume_from.epoch + 1}, step {resume_from.global_step})"
            )
        if self._precision_note:
            say(self._precision_note)
        if lead:
            self._say_what_trains()

    def _say_what_trains(self) -> None:
        """The model in one line (instead of Lightning's table), and what a null monitor means."""
        parameters = parameter_summary(self.model)
        frozen = f" ({parameters['frozen']:,} frozen)" if parameters["frozen"] else ""
        model = type(self.model).__name__
        print(f"Run '{self.run.name}': {model}, {parameters['trainable']:,} trainable parameters{frozen}")
        if self._monitor["metric"] is None:
            self._say_no_monitored_metric(
                "checkpointing.monitor is null" if self._policy.monitor is None else "validation logs no metric"
            )

    def _say_no_monitored_metric(self, why: str) -> None:
        print(
            f"Run '{self.run.name}': {why}, so no best checkpoints and no early stopping; "
            f"evaluation and export use {FINAL_CHECKPOINT} (rolling {LAST_CHECKPOINT} until then)."
        )

    def _check_code(self) -> tuple[dict[str, str], list[str]]:
        """This start's code (kit/runs/code_state.py) and how it differs from the run's; refused unless allowed."""
        code = code_files(Path.cwd())
        recorded = self.run.recorded_code_files()
        if recorded is None or recorded == code:
            return code, []
        if not self.config["fit"].get("allow_changed_code"):
            refuse_changed_code(self.run.name, recorded, code)
        print(f"Run '{self.run.name}': continuing with changed code (--allow_changed_code; noted in record.json).")
        return code, code_differences(recorded, code)

    def _check_pretrained(self) -> dict[str, dict]:
        """The base weights the model and data loaded (kit/weights/cache.py): the run's own, or refused."""
        refuse_other_base_weights(self.run.name, self.run.recorded_pretrained(), "resume")
        return resolved_sources()

    def _record_start(
        self,
        changed_data: list[str],
        data_fingerprint: str | None,
        code: dict[str, str],
        changed_code: list[str],
        pretrained: dict[str, dict],
    ) -> None:
        precision = str(self.trainer.precision)
        self.run.start(self.config_text, monitor=self._monitor, code=code, pretrained=pretrained, precision=precision)
        placement = {key: self.config["fit"]["trainer"].get(key) for key in PLACEMENT_KEYS}
        placement |= {"processes": self.trainer.world_size, "precision": precision}
        seed = self.config["fit"].get("seed_everything")
        start_record(self.run.path, seed, data_fingerprint, placement=placement)
        if changed_data:
            note_changed_raw_data(self.run.path, changed_data)
        if changed_code:
            note_changed_code(self.run.path, changed_code)
        if pretrained:
            note_pretrained(self.run.path, pretrained)
        note_parameters(self.run.path, parameter_summary(self.model))

    def after_fit(self) -> None:
        if self.trainer.fast_dev_run:
            return
        rolling = next(c for c in self.trainer.callbacks if isinstance(c, RollingCheckpoint))
        if self.trainer.is_global_zero:
            self._report_fit_end(rolling)
        # The exit code is a contract (kit/runs/directory.py): 0 only for a finished run.
        if rolling.stopped_by_signal or not rolling.wrote_final:
            let_the_launched_processes_end(self.trainer)  # they stop with the same code, not SIGKILLed by Lightning
        if rolling.stopped_by_signal:
            raise StoppedForRequeue
        if not rolling.wrote_final:
            raise RunNotFinished(
                f"Run '{self.run.name}' ended without finishing (no final.ckpt) and without a stop signal; "
                f"its checkpoints are intact: re-run the same command to continue."
            )

    def _report_fit_end(self, rolling: RollingCheckpoint) -> None:
        metrics = {name: float(value) for name, value in self.trainer.callback_metrics.items()}
        usage = _gpu_memory_used()  # for `report`: what the run took of its GPU
        if rolling.stopped_by_signal:
            signal_name = rolling.signal_name or "a signal"  # under DDP the signal may have reached another rank
            end_start(self.run, "stopped", self.trainer.global_step, metrics, stopped_by=signal_name, **usage)
            print(
                f"Run '{self.run.name}' stopped on {signal_name} at step {self.trainer.global_step}; checkpoint "
                f"written. Re-run the same command to continue (exit code {REQUEUE_EXIT_CODE}: a job script requeues)."
            )
            return
        if not rolling.wrote_final:
            error = "fit ended without final.ckpt"
            end_start(self.run, "failed", self.trainer.global_step, metrics, error=error, **usage)
            return
        stopper = self.trainer.early_stopping_callback
        if stopper is not None and stopper.stopped_epoch > 0:
            print(f"Stopped early after epoch {stopper.stopped_epoch + 1}: {stopper.monitor} stopped improving.")
        end_start(self.run, "finished", self.trainer.global_step, metrics, **usage)
        shown = ", ".join(f"{name} = {value:.4f}" for name, value in sorted(metrics.items()) if name.startswith("val"))
        if rolling.restored_at_end:
            shown = f"(it had trained to its end before this start; {FINAL_CHECKPOINT} written now)"
        print(f"Run '{self.run.name}' finished. {shown}\nOutputs: {self.run.path}{_wandb_line(self.run)}")

    def _evaluation_checkpoint(self) -> None:
        kwargs = self.config_init[self.subcommand]
        given = kwargs.get("ckpt_path")
        chosen = checkpoint_to_use(self.run, given, self.subcommand, data=self.datamodule, model=self.model)
        kwargs["ckpt_path"] = str(chosen)
        if not given:
            print(f"Run '{self.run.name}': using {chosen.name}")

    before_validate = before_test = before_predict = _evaluation_checkpoint


def _with_callbacks_following(callbacks: list[Callback], added: list[Callback]) -> list[Callback]:
    """`callbacks` with early stopping right after RunBookkeeping (which checks the metric first) and
    the best-k ModelCheckpoint right before RollingCheckpoint (which writes last.ckpt after it)."""
    callbacks = list(callbacks)
    for callback in added:
        if isinstance(callback, EarlyStopping):
            after = next(i for i, c in enumerate(callbacks) if isinstance(c, RunBookkeeping)) + 1
        else:
            after = next(i for i, c in enumerate(callbacks) if isinstance(c, RollingCheckpoint))
        callbacks.insert(after, callback)
    return callbacks


def _gpu_memory_used() -> dict[str, float]:
    """This process's peak GPU memory during `fit` ({} without a GPU): each process of a run has its own
    GPU, and rank 0's stands for them (the others train the same model on as much data)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {"peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


class MissingDataError(RuntimeError):
    """The data module could not find (or fetch) its raw data."""


@contextlib.contextmanager
def _missing_data_explained():
    """A FileNotFoundError from the data module's fetch or fingerprint, as one line that says what to do."""
    try:
        yield
    except FileNotFoundError as missing:
        raise MissingDataError(
            f"the data is not there: {missing}. Put the raw files in place (`{CONSOLE_SCRIPT} data fetch` "
            f"fetches what data.py knows how to fetch; `{CONSOLE_SCRIPT} data verify` checks them), then re-run."
        ) from None


def _as_list(value) -> list:
    if value is None or value is False or value is True:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _point_logger_at_run(logger: Namespace, run: RunDirectory) -> None:
    """Make the logger write into the run directory, continuing the same files or W&B run on resume."""
    if not isinstance(logger, Namespace) or "class_path" not in logger:
        return
    class_name = logger.class_path.rsplit(".", 1)[-1]
    init_args = logger.get("init_args") or Namespace()
    if class_name == "CSVLogger":
        logger.class_path = f"{KIT}.training.csv_logger.AppendingCSVLogger"  # keeps rows on resume
        init_args.update(Namespace(save_dir=str(run.path), name=run.logs_dir.name, version=""))
    elif class_name == "TensorBoardLogger":
        init_args.update(Namespace(save_dir=str(run.path), name="tensorboard", version=""))
    elif class_name == "WandbLogger":
        # A W&B id derived from the run name: a resumed run continues the same W&B run.
        init_args.update(Namespace(save_dir=str(run.path), name=run.name, id=run.name, resume="allow"))
        # Quiet: wandb's ten banner lines (colour codes included, even into log files); the end of `fit` says
        # in one line where the W&B run is (_wandb_line).
        os.environ.setdefault("WANDB_SILENT", "true")
        _quiet_wandb_terminal()
    logger.init_args = init_args


def _quiet_wandb_terminal() -> None:
    """wandb's terminal silent before the logger starts it, as WANDB_SILENT asks.

    wandb reads WANDB_SILENT only after it checked the settings `wandb.init` was given, and Lightning's
    WandbLogger always gives `anonymous` (None when unset), which wandb answers with "The anonymous setting
    has no effect" on every start: a warning the researcher cannot act on. `wandb.termsetup` is what
    wandb itself calls with the settings it read; calling it first with the same silent setting changes
    nothing else (wandb starts no process for it).
    """
    if os.environ.get("WANDB_SILENT", "").lower() not in ("true", "1"):
        return  # the researcher asked for wandb's messages
    import wandb

    wandb.termsetup(wandb.Settings(silent=True), None)


def _wandb_line(run: RunDirectory) -> str:
    """Where the run's W&B files are, and for an offline run how to upload them; nothing without W&B."""
    runs = sorted((run.path / "wandb").glob("*run-*"), key=lambda path: path.stat().st_mtime)
    if not runs or not _is_first_process():
        return ""
    newest = runs[-1]
    if newest.name.startswith("offline-run-"):
        return f"\nW&B (offline): {newest}; `wandb sync {newest}` uploads it."
    return f"\nW&B: {newest}"


def _refusing_bad_settings(section: str, build, *args):
    """build(*args), with its ValueError about a setting turned into a BadSettingError naming the section."""
    try:
        return build(*args)
    except ValueError as bad:
        raise BadSettingError(f"{section}: {bad}") from None


def _is_first_process() -> bool:
    """Rank 0, or no DDP (the other processes would repeat the same message)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _silent(*args, **kwargs) -> None:
    """print() for the processes other than rank 0."""


def _default_config_files() -> list[str]:
    return [DEFAULT_CONFIG] if Path(DEFAULT_CONFIG).exists() else []


def _given_config_files(args: list[str]) -> list[str]:
    try:
        return given_config_files(args)
    except RunNameError:  # arguments it cannot read: the parser's message stands
        return []


def build_cli(cli_class: type[ProjectCLI], args: list[str], run: bool) -> ProjectCLI:
    """The project's LightningCLI (run=False: built, not run; project_loading.py); a bad option ends with
    its one message, not 60 lines of usage first."""
    default_config = {"default_config_files": _default_config_files()}
    # With a subcommand, its parser reads the default config; jsonargparse gives a subcommand parser
    # the main parser's other settings. (cli.py runs this only with a subcommand first.)
    subcommand = args[0] if run and args and args[0] in SUBCOMMANDS else None
    where = {subcommand: default_config} if subcommand else default_config
    try:
        return cli_class(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            parser_kwargs={**NO_ABBREVIATIONS, **where, "prog": CONSOLE_SCRIPT, "exit_on_error": False},
            args=args,
            run=run,
            only_subcommand=subcommand,
        )
    except ArgumentError as bad:
        said = one_line(str(bad))
        if said.startswith(("Problems parsing config", 'Parser key "config"')):  # it does not say which file
            said = invalid_yaml_config([*_default_config_files(), *_given_config_files(args)]) or said
        every_option = f"`{CONSOLE_SCRIPT} {subcommand or 'fit'} --help`"
        print(f"error: {said} (every option: {every_option})", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as wrapped:
        # jsonargparse wraps what a model's or data module's constructor raised ("Does not validate
        # against any of the Union subtypes"); a refusal in that chain is said as itself.
        refused = _refusal_behind(wrapped)
        if refused is None:
            # damaged base weights first: transformers' own error inside the model's __init__ is no bad setting
            if settings := unloadable_weights_message(wrapped) or refused_settings_message(wrapped):
                print(f"error: {settings}", file=sys.stderr)
                raise SystemExit(2) from None
            raise
        if run:
            raise refused from None
        print(f"error: {refused}", file=sys.stderr)
        raise SystemExit(2) from None


def run_lightning_cli(args: list[str]) -> int:
    """Run a LightningCLI subcommand; bad configs and refused runs end with a message, not a traceback."""
    try:
        return _run_lightning_cli(args)
    finally:
        release_held_leases()


# What `fit` and the evaluation commands refuse with one line and exit code 2: nothing was changed.
REFUSALS = (
    ConfigChangedError,
    DamagedRunFile,
    RunNameError,
    MissingTrainedRun,
    WorldSizeChangedError,
    BadSettingError,
    RawDataChangedError,
    MissingDataError,
    ShardError,
    MissingMonitoredMetric,
    RunHeldError,
    CodeChangedError,
    WeightsError,
    ShardingRefused,
    PrecisionUnavailable,
    NothingToTrain,
    CheckpointsRequired,
)


def _refusal_behind(error: BaseException | None) -> BaseException | None:
    """The first refusal in `error`'s chain of causes, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, REFUSALS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _run_lightning_cli(args: list[str]) -> int:
    try:
        build_cli(ProjectCLI, args, run=True)
    except RunAlreadyFinished as done:
        print(done)
        return 0
    except StoppedForRequeue:
        return REQUEUE_EXIT_CODE
    except RunNotFinished as unfinished:
        print(f"error: {unfinished}", file=sys.stderr)
        return 1
    except RunTakenOver as taken:
        if _is_first_process():  # under sharded training every process learns it: one says so
            print(f"error: {taken}", file=sys.stderr)
        return 1
    except TrainingDiverged as diverged:
        if _is_first_process():
            print(f"error: training diverged: {diverged}", file=sys.stderr)
        return DIVERGED_EXIT_CODE
    except REFUSALS as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    except Exception as error:
        if (
            refused := refused_data_message(error)
            or refused_optimizer_message(error)
            or refused_trainer_message(error)
            or unloadable_weights_message(error)
        ):
            print(f"error: {refused}", file=sys.stderr)
            return 2
        if mismatch := checkpoint_mismatch_message(error):
            print(f"error: {mismatch}", file=sys.stderr)
            return 2
        explained = storage_error_message(error) or lost_peer_message(error)
        if explained is None:
            raise
        print(f"error: {explained}", file=sys.stderr)
        return 1
    return 0
