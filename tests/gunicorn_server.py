# SPDX-License-Identifier: Apache-2.0
"""Run a WSGI app under a real gunicorn on 127.0.0.1 for a test, and talk to it over raw sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def gunicorn(
    app: str,
    *,
    chdir: Path,
    env: Mapping[str, str],
    worker_class: str = "sync",
    workers: int = 1,
    threads: int = 1,
    preload: bool = False,
    ready_path: str = "/healthz",
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """
    Start gunicorn serving ``app`` (``module:variable``) and yield its base URL and process.

    The server is stopped with SIGTERM when the block ends, and killed if it has not exited
    within STOP_TIMEOUT seconds.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(chdir),
        "--worker-class",
        worker_class,
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
        *(["--preload"] if preload else []),
        app,
    ]
    process = subprocess.Popen(command, env={**os.environ, **env})  # noqa: S603
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url + ready_path, process)
        yield base_url, process
    finally:
        stop(process)


def wait_until_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            message = f"gunicorn exited with status {process.returncode} before serving {url}"
            raise RuntimeError(message)
        try:
            if httpx.get(url, trust_env=False, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            message = f"gunicorn did not serve {url} within {START_TIMEOUT:g} seconds"
            raise TimeoutError(message)
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def raw_get(
    base_url: str, target: str, headers: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    """Send ``GET target`` byte for byte, so no client library normalises the path first."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def wait_for_event(
    path: Path, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """Return the first event in the file that matches, once a writer thread delivered it."""
    deadline = time.monotonic() + timeout
    while True:
        for event in read_events(path):
            if predicate(event):
                return event
        if time.monotonic() > deadline:
            message = f"no matching event in {path} within {timeout:g} seconds"
            raise TimeoutError(message)
        time.sleep(0.05)
