"""One writer per run directory: a lease file, not a file lock. Managed by the copier-lightning template.

Two processes training the same run (a double submit, a second terminal, a requeued job meeting the
still-running one) would remove each other's half-written checkpoints and overwrite each other's
manifest. So `fit` takes the run's lease before it touches anything in the run directory and gives
it back when it ends; a second start is refused in one line naming the holder.

Hand-written rather than `fcntl`/`filelock`: the runs directory of a cluster sits on NFS or Lustre,
where POSIX locks are not always honoured (a lock server that is off, `-o nolock`, `localflock`),
and a lock dies with its process without a word, which is what takeover needs to say. What these
filesystems do guarantee is an exclusive create (`O_CREAT | O_EXCL`, NFSv3 and later, Lustre) and
an atomic rename; the lease is built on those two alone:

* `runs/<run>/lease.json` names the holder: host, process id and the process's start time (a pid
  is reused), Slurm job, since when, and a random token. It is created with O_EXCL: of two starts
  at the same instant, one gets it.
* The holder touches the file every HEARTBEAT_SECONDS (its modification time is the heartbeat; the
  file server stamps it, so clocks of different nodes do not matter much) and checks that the
  token is still its own.
* A holder is dead when, on the same host, its process is gone (or the pid now belongs to a later
  process); on another host, when its heartbeat is older than STALE_AFTER_SECONDS. A dead holder's
  lease is taken over, with a line saying so: the lease is renamed aside (one of two racing takers
  wins the rename), checked to be the one judged dead, and a new one created with O_EXCL.
* Before every checkpoint write the holder re-reads the lease (`confirm`); a process whose lease
  was taken over (it was frozen or cut off for longer than STALE_AFTER_SECONDS) stops with an
  error instead of writing beside the new holder.

Under DDP only the process of global rank 0 writes, so only it holds the lease.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LEASE_NAME = "lease.json"
HEARTBEAT_SECONDS = 30.0
# A holder on another host whose heartbeat is this old is dead: ten heartbeats missed.
STALE_AFTER_SECONDS = 300.0


class RunHeldError(RuntimeError):
    """Another live process holds the run's lease."""


class RunTakenOver(RuntimeError):
    """This process's lease was taken over by another (it was judged dead): it must not write."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_started: str | None  # the process's start time in clock ticks since boot (Linux), against pid reuse
    job: str | None
    since: str
    token: str

    def describe(self) -> str:
        job = f", Slurm job {self.job}" if self.job else ""
        return f"host {self.host}, process {self.pid}{job}, since {self.since}"


def process_start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat), or None without /proc or without the process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after the command name, which may hold spaces


def this_process() -> Holder:
    pid = os.getpid()
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    since = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return Holder(platform.node(), pid, process_start_time(pid), job, since, secrets.token_hex(8))


def is_alive(holder: Holder, heartbeat_age: float) -> bool:
    """Whether the lease's holder may still be writing."""
    if holder.host == platform.node():
        started = process_start_time(holder.pid)
        if started is not None:
            return holder.pid_started is None or started == holder.pid_started
        if Path("/proc/self/stat").exists():
            return False  # /proc answers for this host, and the process is not there
    return heartbeat_age < STALE_AFTER_SECONDS


_HELD: list[RunLease] = []  # this process's leases, for release_held_leases()


def release_held_leases() -> None:
    """Give back every lease this process holds (at the end of a command, whatever ended it)."""
    while _HELD:
        _HELD.pop().release()


class RunLease:
    """A run directory's lease: `acquire()` first, `confirm()` before each checkpoint, `release()` at the end."""

    def __init__(self, run_path: Path) -> None:
        self.path = Path(run_path) / LEASE_NAME
        self.holder: Holder | None = None
        self._created: list[Path] = []  # folders made only to hold the lease: removed again if left empty
        self._stop_heartbeat = threading.Event()

    def acquire(self) -> str | None:
        """Take the lease; returns a line to print when a dead holder's lease was taken over.

        Raises RunHeldError naming the holder when it is alive.
        """
        self._created = [folder for folder in (self.path.parent.parent, self.path.parent) if not folder.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = this_process()
        note = None
        for _ in range(20):  # each round ends in success, a refusal, or a race lost to another start
            if self._create(me):
                self.holder = me
                _HELD.append(self)
                self._start_heartbeat()
                return note
            current = self._read()
            if current is None:
                continue  # removed (released) between the two calls: try again
            holder, heartbeat_age = current
            if is_alive(holder, heartbeat_age):
                raise RunHeldError(
                    f"Run '{self.path.parent.name}' is being trained by another process ({holder.describe()}; "
                    f"its heartbeat is {heartbeat_age:.0f} s old). One run has one writer: wait for it to end, "
                    f"stop it, or train under another --run_name. (A holder that died is taken over by itself: "
                    f"at once on the same host, after {STALE_AFTER_SECONDS / 60:.0f} minutes without a heartbeat "
                    f"from another host.)"
                )
            if self._set_aside(holder):
                note = (
                    f"Run '{self.path.parent.name}': took over from a writer that is gone ({holder.describe()}; "
                    f"last heartbeat {heartbeat_age:.0f} s ago)."
                )
        raise RunHeldError(
            f"Run '{self.path.parent.name}': could not take the lease {self.path} (other starts race for it)"
        )

    def live_holder(self) -> Holder | None:
        """Who holds the lease now, if that process is alive; None if nobody does (or the holder died)."""
        current = self._read()
        if current is None or not is_alive(*current):
            return None
        return current[0]

    def confirm(self) -> None:
        """Raise RunTakenOver if the lease is no longer this process's (read from the file itself)."""
        if self.holder is None:
            return
        current = self._read()
        if current is None or current[0].token != self.holder.token:
            taker = current[0].describe() if current else "nobody (the lease file is gone)"
            raise RunTakenOver(
                f"Run '{self.path.parent.name}': this process lost its lease to {taker} (it was judged dead: no "
                f"heartbeat for {STALE_AFTER_SECONDS / 60:.0f} minutes); it stops without writing anything more."
            )

    def release(self) -> None:
        """Give the lease back (only if it is still this process's)."""
        self._stop_heartbeat.set()
        if self.holder is None:
            return
        with contextlib.suppress(OSError, RunTakenOver):
            self.confirm()
            self.path.unlink()
        self.holder = None
        for folder in reversed(self._created):  # a start refused before it wrote anything leaves no run behind
            with contextlib.suppress(OSError):
                folder.rmdir()

    # -- the file ---------------------------------------------------------------------------------
    def _create(self, me: Holder) -> bool:
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as stream:
            json.dump(asdict(me), stream)
            stream.flush()
            os.fsync(stream.fileno())
        current = self._read()  # read back: some NFS clients have been known to answer an O_EXCL create twice
        return current is not None and current[0].token == me.token

    def _read(self) -> tuple[Holder, float] | None:
        """The holder and the age of its heartbeat in seconds, or None if there is no lease file."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            return Holder(**json.loads(text)), max(age, 0.0)
        except (ValueError, TypeError):
            # Being written by _create this instant, or left half-written by a start killed there:
            # judged like a holder on another host, by its age.
            return Holder("(unknown: the lease file is unreadable)", 0, None, None, "?", "unreadable"), max(age, 0.0)

    def _set_aside(self, dead: Holder) -> bool:
        """Rename the dead holder's lease away; False if another start took it over first."""
        aside = self.path.with_name(f"{LEASE_NAME}.taken-over-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            renamed = Holder(**json.loads(aside.read_text()))
        except (OSError, ValueError, TypeError):
            renamed = None
        if renamed is not None and renamed.token != dead.token:
            # Between the read and the rename another start took over and made a new lease: give it back.
            with contextlib.suppress(OSError):
                os.link(aside, self.path)  # fails if yet another one exists: then that one stands
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    # -- the heartbeat ----------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop_heartbeat.clear()
        thread = threading.Thread(target=self._beat, name="run-lease-heartbeat", daemon=True)
        thread.start()

    def _beat(self) -> None:
        while not self._stop_heartbeat.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError, RunTakenOver):
                self.confirm()
                os.utime(self.path)  # the server's clock stamps it
