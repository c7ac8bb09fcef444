"""Start a project's commands from an interpreter that has already imported Lightning, for the tests.

Most of the test suite's CPU time was Python processes importing torch and Lightning (3.4 s of a
4.9 s one-epoch `fit`, docs/benchmarks.md). A *command server* per project venv imports them once;
each command is then a child forked from it (the same `fit`: about 2 s forked, 5.7 s fresh). The child is a real
process, as `subprocess.Popen` would give: its own pid (the tests signal and SIGKILL it directly),
its own session when asked, the caller's stdin/stdout/stderr (passed over a Unix socket), cwd,
environment, `sys.argv` and `sys.path`, and its exit status as `waitpid` reports it (-9 after a
SIGKILL). The commands a command starts in turn (`reproduce`'s and the project's own tests' `fit`,
the other processes of a DDP run that Lightning's launcher starts) come from the same server, in
the process group of the command that asked, as they would have been: `subprocess.Popen` is this
module's `Popen` inside a command, which starts anything it cannot route as a fresh process. A
command started in a session of its own (`start_new_session`) gets a server of its own in that
session, forked from the first one, so that its children can join its process group: the tests
signal and kill a command's group, as a terminal or Slurm does. Project venvs that hold nothing to
import but the project itself (a path in a .pth file) and borrow every other package from the same
folder share one server: a command forked by it becomes a process of its own venv (sys.executable,
sys.prefix, sys.path as a fresh start of that venv's Python has them), and the server imported
nothing from the first venv but what they borrow.

Settings that libraries read once, when they are loaded (libgomp's OMP_NUM_THREADS; Hugging Face's
hub, cache and offline settings, which huggingface_hub, transformers and datasets read at import) are
the command's own: each server is loaded with the values of the commands it starts, and commands
with other values get a server of their own (`_settings_read_at_load`; Hugging Face's only where
huggingface_hub is installed). What a fresh process would differ in: the hash seed (shared by the
children of one server, so the tests cannot catch hash-order dependence; nothing in the kit iterates
sets of strings into results), the parent (a command's own command is the server's child, not the
command's: nothing in the kit or Lightning reads `getppid` of a rank), and who leads a new session
(its server; the command leads its process group, which is what signals reach). torch's and numpy's
global seeds are drawn anew in each child, as in a fresh process.
`TEST_FRESH_PROCESSES=1` starts every command as a fresh process.

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

# torch and torchmetrics come with Lightning (and transformers, where installed); peft and datasets are
# the fine-tune example's (0.5 s of CPU of a 4.9 s forked `fit` there). A venv without one skips it.
PRELOAD = ("lightning.pytorch", "peft", "datasets")
# Read when a library is loaded, not when it is used: the names, and the prefixes of names.
SETTINGS_READ_AT_LOAD = ("OMP_NUM_THREADS",)
SETTINGS_READ_AT_LOAD_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
_READY = "command server ready"


# ---- the tests' side ---------------------------------------------------------------------------


# Inside a command (a server's child): the address of the server that forked it and that server's
# session; None in the tests' own process. And the settings the server loaded its libraries with.
_forked_by: tuple[str, int] | None = None
_settings_when_loaded: tuple[tuple[str, str], ...] = ()
_hugging_face_loaded = False


def _settings_read_at_load(env, hugging_face: bool = True) -> tuple[tuple[str, str], ...]:
    """The variables of `env` that a preloaded library read when it was loaded (see SETTINGS_READ_AT_LOAD);
    Hugging Face's only where its libraries were loaded (`hugging_face`)."""
    return tuple(
        sorted(
            (name, value)
            for name, value in env.items()
            if name in SETTINGS_READ_AT_LOAD or (hugging_face and name.startswith(SETTINGS_READ_AT_LOAD_PREFIXES))
        )
    )


def can_start(command: list, **popen_options) -> bool:
    """Whether `command` is a project venv's console script (or `python -m`) that a server can start."""
    if os.environ.get("TEST_FRESH_PROCESSES") or not command or isinstance(command, str | bytes):
        return False
    if any(popen_options.get(option) for option in ("shell", "preexec_fn", "pass_fds", "executable")):
        return False
    if popen_options.get("process_group") is not None:
        return False
    python = _interpreter([os.fspath(a) for a in command])
    if python is None or _forked_by is None:
        return python is not None
    env = popen_options.get("env") or os.environ
    if _settings_read_at_load(env, _hugging_face_loaded) != _settings_when_loaded:
        return False  # its server was loaded with other values, and a command has only that server
    # A command's own command: from its server, which can put the child in the asking command's
    # process group only from the same session (a command that called setsid itself starts fresh).
    same_venv = python.parent.parent.resolve() == Path(sys.prefix).resolve()
    return same_venv and os.getsid(0) == _forked_by[1]


def _interpreter(command: list) -> Path | None:
    """The Python of the project venv that runs `command`: its console script's shebang, or `python -m`.

    A project venv is `<project>/.venv` of a project rendered from the template (its copier answers
    beside it); other commands (copier, pip, venv) start fresh.
    """
    first = Path(command[0])
    if first.name.startswith("python") and len(command) > 2 and command[1] == "-m":
        python = first
    elif first.name.startswith("python") and len(command) > 1:  # `python <console script>`
        python = first if _console_script_python(Path(command[1])) else None
    else:
        python = _console_script_python(first)
    if python is None:
        return None
    venv = python.parent.parent
    if venv.name == ".venv" and (venv / "pyvenv.cfg").is_file() and (venv.parent / ".copier-answers.yml").is_file():
        return python
    return None


def _console_script_python(script: Path) -> Path | None:
    """The Python a console script's shebang names (None: not a console script)."""
    try:
        with open(script, "rb") as opened:
            shebang, _, body = opened.read(512).decode().partition("\n")
    except (OSError, UnicodeDecodeError):
        return None
    if not shebang.startswith("#!") or "sys.exit(main())" not in body:
        return None
    return Path(shebang[2:].strip())


class _Server:
    """One command server: a process of `python` that preloaded Lightning and listens on a socket."""

    def __init__(self, python: Path, settings: tuple[tuple[str, str], ...]) -> None:
        self.folder = tempfile.mkdtemp(prefix="cmds-")
        self.address = os.path.join(self.folder, "socket")
        # Without the tests' PYTHONPATH: a command's own comes with it.
        env = {
            name: value
            for name, value in os.environ.items()
            if name != "PYTHONPATH" and not _settings_read_at_load({name: value})
        }
        with open(os.path.join(self.folder, "server.log"), "w") as log:  # the server keeps its own copy
            self.process = subprocess.Popen(
                [str(python), __file__, self.address],
                env={**env, **dict(settings)},  # loaded with its commands' values of them
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


def _server_for(python: Path, settings: tuple[tuple[str, str], ...]) -> _Server:
    """The server for `python` and these settings read at load, started on first use; shared by the
    venvs that borrow the same packages (`_borrowed_packages`); a new one after packages changed (pip
    installing or removing changes a site-packages folder's mtime)."""
    borrowed = _borrowed_packages(python)
    if borrowed:  # the base interpreter and the folders, whichever venv asks first
        packages = (os.path.realpath(python), *((folder, os.stat(folder).st_mtime_ns) for folder in borrowed))
    else:
        site_packages = _site_packages_of(str(python.parent.parent))
        packages = (str(python), os.stat(site_packages).st_mtime_ns)
    key = (packages, settings)
    with _servers_lock:
        if key not in _servers or _servers[key].process.poll() is not None:
            _servers[key] = _Server(python, settings)
        return _servers[key]


def _borrowed_packages(python: Path) -> list[str]:
    """The folders `python`'s venv borrows its packages from (.pth files), when its own site-packages
    holds nothing else to import than the project's source folder; empty otherwise."""
    venv = python.parent.parent
    for entry in Path(_site_packages_of(str(venv))).iterdir():
        if entry.suffix == ".pth" and any(line.startswith("import") for line in _lines(entry)):
            return []  # code that runs at start
        if entry.suffix != ".pth" and not entry.name.endswith(".dist-info"):
            return []  # a package of its own
    return _folders_added(venv)


def _folders_added(venv: Path) -> list[str]:
    """The folders a venv's .pth files add to sys.path, but the project's own source folder."""
    lines = [line.strip() for pth in Path(_site_packages_of(str(venv))).glob("*.pth") for line in _lines(pth)]
    return sorted(
        line for line in lines if line and not line.startswith(("#", "import")) and line != str(venv.parent / "src")
    )


def _lines(file: Path) -> list[str]:
    return file.read_text().splitlines()


def _has_hugging_face(python: Path) -> bool:
    """Whether `python`'s venv has huggingface_hub (Lightning then loads it, which reads its settings)."""
    venv = python.parent.parent
    return any(
        Path(folder, "huggingface_hub").is_dir() for folder in [_site_packages_of(str(venv)), *_folders_added(venv)]
    )


def _site_packages_of(venv: str) -> str:
    return str(next(Path(venv, "lib").glob("python*/site-packages")))


class Popen(subprocess.Popen):
    """`subprocess.Popen` whose child is forked by the command server of the command's venv.

    Only the start and the wait differ; pipes, `communicate`, timeouts and signals are Popen's own.
    A command it cannot route (see `can_start`) starts as `subprocess.Popen` would start it.
    """

    _routed = False

    def _execute_child(
        self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo, creationflags, shell,
        p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, restore_signals,
        gid, gids, uid, umask, start_new_session, process_group,
    ) -> None:  # fmt: skip
        options = {"shell": shell, "preexec_fn": preexec_fn, "pass_fds": pass_fds, "executable": executable}
        group = None if process_group == -1 else process_group  # -1: Popen's internal "not given"
        command_env = env if env is not None else os.environ
        routed = can_start(args, env=command_env, process_group=group, **options)
        connection = self._connect(args, command_env) if routed else None
        if connection is None:
            return super()._execute_child(
                args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo, creationflags, shell,
                p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, restore_signals,
                gid, gids, uid, umask, start_new_session, process_group,
            )  # fmt: skip
        self._routed, self._connection = True, connection
        self.pid = None
        args = [os.fspath(a) for a in args]
        cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
        if not os.path.isdir(cwd):
            raise FileNotFoundError(2, "No such file or directory", cwd)
        request = {
            "python": str(_interpreter(args)),
            "argv": args,
            "cwd": cwd,
            "env": {os.fsdecode(k): os.fsdecode(v) for k, v in command_env.items()},
            "new_session": bool(start_new_session),
            # A command's own command joins the asking command's process group, as a fresh child would.
            "process_group": os.getpgid(0) if _forked_by and not start_new_session else None,
        }
        own = []  # descriptors opened here for the child's stdin/stdout/stderr that Popen does not own
        fds = []
        for fd, inherited in ((p2cread, 0), (c2pwrite, 1), (errwrite, 2)):
            if fd == -1:
                fd = os.dup(inherited) if _is_open(inherited) else os.open(os.devnull, os.O_RDWR)
                own.append(fd)
            fds.append(fd)
        try:
            message = json.dumps(request).encode()
            socket.send_fds(self._connection, [len(message).to_bytes(8, "big") + message], fds)
            self._received = b""
            self.pid = int(self._reply(block=True))
            self._child_created = True
        finally:
            for fd in own:
                os.close(fd)
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    @staticmethod
    def _connect(args, env) -> socket.socket | None:
        """A connection to the server that starts `args` with `env`; None inside a command whose server has
        ended (a DDP rank that outlived the command that started it): then its commands start fresh."""
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if _forked_by:
                connection.connect(_forked_by[0])
            else:
                python = _interpreter(args)
                connection.connect(_server_for(python, _settings_read_at_load(env, _has_hugging_face(python))).address)
        except OSError:
            connection.close()
            if _forked_by is None:
                raise
            return None
        return connection

    def _try_wait(self, wait_flags):
        """(pid, wait status) as `os.waitpid` gives them, from the server that is the child's parent."""
        if not self._routed:
            return super()._try_wait(wait_flags)
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

    def _internal_poll(self, _deadstate=None, **kwargs):
        if not self._routed:
            return super()._internal_poll(_deadstate, **kwargs)
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
    return Popen(command, **popen_options)


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
    """Preload, then accept commands until stdin closes; returns only in a command: (request, its fds)."""
    import gc

    global _settings_when_loaded, _hugging_face_loaded
    gc.disable()  # as the project's command imports Lightning (kit/base/garbage_collection.py)
    for module in PRELOAD:
        with contextlib.suppress(ImportError):  # a project without it: its commands import what they need
            __import__(module)
    _hugging_face_loaded = "huggingface_hub" in sys.modules
    _settings_when_loaded = _settings_read_at_load(os.environ, _hugging_face_loaded)
    gc.freeze()
    gc.enable()
    listener = _listen(address)
    print(_READY, flush=True)
    return _accept_commands(listener, address, until=None)


def _listen(address: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    return listener


def _accept_commands(
    listener: socket.socket, address: str, until: tuple[int, socket.socket] | None
) -> tuple[dict, list[int]]:
    """Fork a child per request; tell the requester its pid, then its wait status.

    Ends when stdin closes (the tests' server), or when the command `until` (pid, connection) ends (a
    session's server: the command's status is sent, then this process exits). Returns only in a
    forked command.
    """
    global _forked_by
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    if until is None:
        selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    else:
        selector.register(os.pidfd_open(until[0]), selectors.EVENT_READ, (*until, True))
    while True:
        for key, _ in selector.select():
            if key.data == "stdin":
                if not sys.stdin.readline():
                    sys.exit(0)
            elif key.data == "accept":
                connection, _ = listener.accept()
                request, fds = _receive(connection)
                pid = os.fork()
                if pid == 0:  # without this server's sockets and the other commands' pidfds
                    for registered in list(selector.get_map().values()):
                        if isinstance(registered.fileobj, int):
                            os.close(registered.fileobj)  # another command's pidfd
                            if registered.data[1] is not None:
                                registered.data[1].close()  # and its connection
                    selector.close()
                    listener.close()
                    if request["new_session"]:
                        return _serve_a_session(request, fds, connection, address)
                    connection.close()
                    _forked_by = (address, os.getsid(0))
                    if request["process_group"] is not None:
                        with contextlib.suppress(OSError):  # the asking command's group ended with it
                            os.setpgid(0, request["process_group"])
                    return request, fds
                for fd in fds:
                    os.close(fd)
                if request["new_session"]:  # that session's server reports the command's pid and status
                    connection.close()
                    selector.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, None, False))
                    continue
                connection.sendall(f"{pid}\n".encode())
                selector.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, connection, False))
            else:  # a child ended: its status goes to the test or command waiting for it
                pid, connection, last = key.data
                selector.unregister(key.fileobj)
                os.close(key.fileobj)
                _, status = os.waitpid(pid, 0)
                if connection is not None:
                    with contextlib.suppress(OSError):  # the requester stopped waiting (its Popen was dropped)
                        connection.sendall(f"{status}\n".encode())
                    connection.close()
                if last:
                    listener.close()
                    with contextlib.suppress(OSError):  # the tests may have removed the folder already
                        os.unlink(address)
                    os._exit(0)


def _serve_a_session(request: dict, fds: list[int], connection: socket.socket, parent: str) -> tuple[dict, list[int]]:
    """In a new session: fork the command as the leader of its own process group, then serve the
    commands it starts, so that they can join its group. Returns only in a forked command."""
    global _forked_by
    os.setsid()
    address = f"{parent}-{os.getpid()}"
    listener = _listen(address)
    pid = os.fork()
    if pid == 0:
        listener.close()
        connection.close()
        os.setpgid(0, 0)
        _forked_by = (address, os.getsid(0))
        return request, fds
    for fd in fds:
        os.close(fd)
    connection.sendall(f"{pid}\n".encode())
    return _accept_commands(listener, address, until=(pid, connection))


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    while len(data) < 8 or len(data) < 8 + int.from_bytes(data[:8], "big"):
        more = connection.recv(1 << 20)
        if not more:
            raise ConnectionError("a command request ended early")
        data += more
    return json.loads(data[8:]), fds


def _run_in_child(request: dict, fds: list[int]) -> None:
    """Become the command: its descriptors, cwd, environment, argv and path; then run it."""
    import runpy

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    from_env = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    installed = _become_a_process_of(request["python"])
    if os.environ.get("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
    _fresh_random_seeds()
    subprocess.Popen = Popen  # the commands this one starts: from this server when they can be
    if len(argv) > 2 and argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        sys.path[:] = [os.getcwd(), *from_env, *installed]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        script = argv[1:] if Path(argv[0]).name.startswith("python") else argv  # `python <console script>`
        sys.argv = list(script)
        sys.path[:] = [os.path.dirname(os.path.abspath(script[0])), *from_env, *installed]
        runpy.run_path(script[0], run_name="__main__")
    sys.exit(0)


def _become_a_process_of(python: str) -> list[str]:
    """The installed part of the sys.path a fresh start of `python` has (after the script's or the working
    directory's folder); where `python` is another venv's than this server's (one that borrows the same
    packages), also that venv's sys.executable, sys.prefix and the paths sysconfig and site derive from it."""
    installed = sys.path[1:]  # without this file's folder, which a fresh start would not have
    venv = os.path.dirname(os.path.dirname(python))
    if os.path.samefile(venv, sys.prefix):
        return installed
    import site
    import sysconfig

    ours, theirs = _site_paths(sys.prefix), _site_paths(venv)
    at = installed.index(ours[0])
    installed = [path for path in installed if path not in ours]
    installed[at:at] = theirs
    sys.executable, sys.prefix, sys.exec_prefix = python, venv, venv
    site.PREFIXES[:] = [venv, venv]
    sysconfig._CONFIG_VARS = None  # built from sys.prefix at its first use, then kept (private)
    if hasattr(sysconfig, "_CONFIG_VARS_INITIALIZED"):  # Python 3.12 and later
        sysconfig._CONFIG_VARS_INITIALIZED = False
    return installed


def _site_paths(venv: str) -> list[str]:
    """A venv's site-packages folder and the folders its .pth files add, as `site` adds them at a start."""
    import site

    saved = sys.path[:]
    try:
        sys.path[:] = []
        site.addsitedir(_site_packages_of(venv))
        return sys.path[:]
    finally:
        sys.path[:] = saved


def _fresh_random_seeds() -> None:
    """Draw torch's and numpy's global seeds anew, as a fresh process would (`random` does so at fork)."""
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


if __name__ == "__main__":
    _run_in_child(*_serve(sys.argv[1]))
