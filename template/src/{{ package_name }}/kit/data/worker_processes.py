"""Data-loading workers that end with the process that started them. Managed by the copier-lightning template.

A DataLoader worker watches its parent (torch's watchdog compares `getppid()` with the pid it saw at
start), but it takes that first look only after `worker_init_fn` has run. A training process
SIGKILLed while its workers are starting (a kill, an out-of-memory kill, a preemption at the wrong
moment) leaves workers whose first look already sees init or a subreaper as their parent: they
wait for work for ever, holding memory and any pipe the job's output goes to (one held a CI test
for 20 minutes).

`end_with_parent()` is a `worker_init_fn` that first asks the kernel to SIGKILL the worker when
the process that started it ends (Linux's `prctl(PR_SET_PDEATHSIG)`), then checks that this
process is still there (it may have died before the request), and only then runs your own
`worker_init_fn`. Every loader the kit builds uses it (ResumableDataLoader, and every loader given
LoaderSettings' options); use it in your own loaders:

    DataLoader(dataset, num_workers=4, worker_init_fn=end_with_parent())
    DataLoader(dataset, num_workers=4, worker_init_fn=end_with_parent(my_worker_init))

The kernel sends the signal when the *thread* that started the worker ends: create the loader's
iterator in the thread that lives as long as the loading (Lightning's training loop does).
Elsewhere than Linux it only runs your function.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class EndWithParent:
    """A picklable `worker_init_fn`: die with the parent process, then run `then(worker_id)`."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.parent_pid = os.getpid()  # made in the process that creates the loader: the workers' parent
        self.then = then

    def __call__(self, worker_id: int) -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self.parent_pid:
                os._exit(0)  # the parent died before the request took effect: nobody will ask for batches
        if self.then is not None:
            self.then(worker_id)


def end_with_parent(worker_init_fn: Callable[[int], None] | None = None) -> EndWithParent:
    """A `worker_init_fn` for a DataLoader whose workers must not outlive this process (see the module's docstring)."""
    if isinstance(worker_init_fn, EndWithParent):
        return worker_init_fn
    return EndWithParent(worker_init_fn)
