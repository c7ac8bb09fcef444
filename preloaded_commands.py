"""Start a project's commands from an interpreter that has already imported Lightning, for the tests.

Most of the test suite's CPU time was Python processes importing torch and Lightning (3.4 s of a
4.9 s one-epoch `fit`, docs/benchmarks.md). A *command server* per project venv imports them once;
each command is then a child forked from it (the same `fit`: about 2 s forked, 5.7 s fresh). The child is a real
process, as `subprocess.Popen` would give: its own pid (the tests signal and SIGKILL it directly),
its own session when asked, the caller's stdin/stdout/stderr (passed over a Unix socket), cwd,
environment, `sys.argv` and `sys.path`, and its exit status as `waitpid` reports it (-9 after a
SIGKILL). Lightning's launcher still starts a DDP run's other processes fresh, from `sys.argv`.

What a fresh process would differ in: the hash seed (shared by the children of one server, so the
tests cannot catch hash-order dependence; nothing in the kit iterates sets of strings into results)
and libraries' settings read when they are loaded (libgomp's OMP_NUM_THREADS: a test that sets it
starts fresh processes, see `can_start`). torch's and numpy's global seeds are drawn anew in each
child, as in a fresh process. `TEST_FRESH_PROCESSES=1` starts every command as a fresh process.

Hand-written because no kept library does this: multiprocessing's forkserver runs functions of the
calling interpreter, not another venv's console scripts with their own argv, environment and
descriptors. This file is both sides: the tests import it (`Popen`), and the server is this file run
by the project's own Python (stdlib only on that side).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PRELOAD = ("lightning.pytorch",)  # torch and torchmetrics come with it
_READY = "command server ready"


# ---- the tests' side ---------------------------------------------------------------------------


def can_start(command: list, **popen_options) -> bool:
    """Whether `command` is a project venv's console script (or `python -m`) that a server can start."""
    if os.environ.get("TEST_FRESH_PROCESSES") or not command:
        return False
    if popen_options.get("shell") or popen_options.get("preexec_fn") or popen_options.get("pass_fds"):
        return False
    env = popen_options.get("env") or os.environ
    if env.get("OMP_NUM_THREADS") != os.environ.get("OMP_NUM_THREADS"):
        return False  # read by libgomp when torch loads: a preloaded server would keep its own
    return _interpreter(command) is not None


def _interpreter(command: list) -> Path | None:
    """The Python of the project venv that runs `command`: its console script's shebang, or `python -m`.

    A project venv is `<project>/.venv` of a project rendered from the template (its copier answers
    beside it); other commands (copier, pip, venv) start fresh.
    """
    first = Path(command[0])
    if first.name.startswith("python") and len(command) > 2 and command[1] == "-m":
        python = first
    else:
        try:
            with open(first, "rb") as script:
                shebang, _, body = script.read(512).decode().partition("\n")
        except (OSError, UnicodeDecodeError):
            return None
        if not shebang.startswith("#!") or "sys.exit(main())" not in body:
            return None
        python = Path(shebang[2:].strip())
    venv = python.parent.parent
    if venv.name == ".venv" and (venv / "pyvenv.cfg").is_file() and (venv.parent / ".copier-answers.yml").is_file():
        return python
    return None


class _Server:
    """One command server: a process of `python` that preloaded Lightning and listens on a socket."""

    def __init__(self, python: Path) -> None:
        self.folder = tempfile.mkdtemp(prefix="cmds-")
        self.address = os.path.join(self.folder, "socket")
        with open(os.path.join(self.folder, "server.log"), "w") as log:  # the server keeps its own copy
            self.process = subprocess.Popen(
                [str(python), __file__, self.address],
                stdin=subprocess.PIPE,  # its end of life: the server exits when this pipe closes
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # not in the tests' process group: a group signal is not for it
                text=True,
            )
        if self.process.stdout.readline().strip() != _READY:
            raise RuntimeError(f"The command server for {python} did not start: see {self.folder}/server.log")

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.process.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_servers: dict[tuple, _Server] = {}
_servers_lock = threading.Lock()
atexit.register(lambda: [server.stop() for server in _servers.values()])


def _server_for(python: Path) -> _Server:
    """The server for `python`, started on first use; a new one after packages changed in its venv."""
    site_packages = next((python.parent.parent / "lib").glob("python*/site-packages"))
    key = (str(python), site_packages.stat().st_mtime_ns)  # pip installing or removing changes it
    with _servers_lock:
        if key not in _servers or _servers[key].process.poll() is not None:
            _servers[key] = _Server(python)
        return _servers[key]


class Popen(subprocess.Popen):
    """`subprocess.Popen` whose child is forked by the command server of the command's venv.

    Only the start and the wait differ; pipes, `communicate`, timeouts and signals are Popen's own.
    """

    def _execute_child(
        self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo, creationflags, shell,
        p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, restore_signals,
        gid, gids, uid, umask, start_new_session, process_group,
    ) -> None:  # fmt: skip
        self.pid = None
        args = [os.fspath(a) for a in args]
        cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
        if not os.path.isdir(cwd):
            raise FileNotFoundError(2, "No such file or directory", cwd)
        request = {
            "argv": args,
            "cwd": cwd,
            "env": {os.fsdecode(k): os.fsdecode(v) for k, v in (env if env is not None else os.environ).items()},
            "new_session": bool(start_new_session),
        }
        own = []  # descriptors opened here for the child's stdin/stdout/stderr that Popen does not own
        fds = []
        for fd, inherited in ((p2cread, 0), (c2pwrite, 1), (errwrite, 2)):
            if fd == -1:
                fd = os.dup(inherited) if _is_open(inherited) else os.open(os.devnull, os.O_RDWR)
                own.append(fd)
            fds.append(fd)
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connection.connect(_server_for(_interpreter(args)).address)
            message = json.dumps(request).encode()
            socket.send_fds(self._connection, [len(message).to_bytes(8, "big") + message], fds)
            self._received = b""
            self.pid = int(self._reply(block=True))
            self._child_created = True
        finally:
            for fd in own:
                os.close(fd)
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _try_wait(self, wait_flags):
        """(pid, wait status) as `os.waitpid` gives them, from the server that is the child's parent."""
        line = self._reply(block=not wait_flags & os.WNOHANG)
        if line is None:
            return (0, 0)
        self._connection.close()
        return (self.pid, int(line))

    def _reply(self, block: bool) -> str | None:
        """The server's next line (the pid, then the wait status); None when `block` is False and none came."""
        while b"\n" not in self._received:
            if not block and not _readable(self._connection):
                return None
            more = self._connection.recv(4096)
            if not more:
                raise ChildProcessError(f"The command server that started process {self.pid} ended before it")
            self._received += more
        line, _, self._received = self._received.partition(b"\n")
        return line.decode()

    def _internal_poll(self, _deadstate=None, **_):
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if self.returncode is None:
                    pid, status = self._try_wait(os.WNOHANG)
                    if pid == self.pid:
                        self._handle_exitstatus(status)
            except (ChildProcessError, OSError):
                if _deadstate is not None:
                    self.returncode = _deadstate
            finally:
                self._waitpid_lock.release()
        return self.returncode


def _readable(connection: socket.socket) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(connection, selectors.EVENT_READ)
        return bool(selector.select(timeout=0))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def start(command: list, **popen_options) -> subprocess.Popen:
    """`subprocess.Popen(command, ...)`, from a command server when the command is a project's."""
    return (Popen if can_start(command, **popen_options) else subprocess.Popen)(command, **popen_options)


def run(command: list, input=None, timeout: float | None = None, capture_output: bool = False, **popen_options):
    """`subprocess.run` (without `check`), from a command server when the command is a project's."""
    if capture_output:
        popen_options.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with start(command, stdin=subprocess.PIPE if input is not None else None, **popen_options) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except BaseException:
            process.kill()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# ---- the server's side (run by the project's Python) --------------------------------------------


def _serve(address: str) -> tuple[dict, list[int]]:
    """Accept commands until stdin closes; returns only in a forked child: (request, its fds)."""
    import gc

    gc.disable()  # as the project's command imports Lightning (kit/base/garbage_collection.py)
    for module in PRELOAD:
        with contextlib.suppress(ImportError):  # a project without it: its commands import what they need
            __import__(module)
    gc.freeze()
    gc.enable()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    print(_READY, flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "stdin":
                if not sys.stdin.readline():
                    sys.exit(0)
            elif key.data == "accept":
                connection, _ = listener.accept()
                request, fds = _receive(connection)
                pid = os.fork()
                if pid == 0:  # the command: without the server's sockets and the other commands' pidfds
                    for registered in list(selector.get_map().values()):
                        if isinstance(registered.fileobj, int):
                            os.close(registered.fileobj)  # another command's pidfd
                            registered.data[1].close()  # and its connection
                        elif registered.fileobj is listener:
                            listener.close()
                    selector.close()
                    connection.close()
                    return request, fds
                for fd in fds:
                    os.close(fd)
                connection.sendall(f"{pid}\n".encode())
                selector.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, connection))
            else:  # a child ended: its status goes to the test waiting for it
                pid, connection = key.data
                selector.unregister(key.fileobj)
                os.close(key.fileobj)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):  # the test stopped waiting (its Popen was dropped)
                    connection.sendall(f"{status}\n".encode())
                connection.close()


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    while len(data) < 8 or len(data) < 8 + int.from_bytes(data[:8], "big"):
        more = connection.recv(1 << 20)
        if not more:
            raise ConnectionError("a command request ended early")
        data += more
    return json.loads(data[8:]), fds


def _run_in_child(request: dict, fds: list[int]) -> None:
    """Become the command: its session, descriptors, cwd, environment, argv and path; then run it."""
    import runpy

    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    from_env = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    installed = sys.path[1:]  # without this file's folder, which a fresh start would not have
    if os.environ.get("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
    _fresh_random_seeds()
    if len(argv) > 2 and argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        sys.path[:] = [os.getcwd(), *from_env, *installed]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[:] = [os.path.dirname(os.path.abspath(argv[0])), *from_env, *installed]
        runpy.run_path(argv[0], run_name="__main__")
    sys.exit(0)


def _fresh_random_seeds() -> None:
    """Draw torch's and numpy's global seeds anew, as a fresh process would (`random` does so at fork)."""
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


if __name__ == "__main__":
    _run_in_child(*_serve(sys.argv[1]))
