"""A project's `serve` in a test: started on a free loopback port, asked, stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(
    command: list[str], project: Path, env: dict, *options: str, run_name: str = "served"
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`serve --run_name RUN` on a free loopback port, ready; stopped (SIGTERM) on the way out."""
    port = free_port()
    server = subprocess.Popen(
        [*command, "serve", "--run_name", run_name, "--port", str(port), *options],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, url)
        yield url, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


def wait_until_ready(server: subprocess.Popen, url: str, seconds: float = 90) -> None:
    """Until `server` answers 200 at `url`/ready; AssertionError with its output if it ends or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if get(f"{url}/ready")[0] == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"serve did not become ready: {server.communicate(timeout=30)}")
        time.sleep(0.2)


def get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/predict", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
