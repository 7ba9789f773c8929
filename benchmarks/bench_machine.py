# SPDX-License-Identifier: Apache-2.0
"""Describe the machine and the package versions that a benchmark ran with."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import zerotrust

PACKAGES = (
    "zerotrust-middleware",
    "starlette",
    "uvicorn",
    "PyJWT",
    "cryptography",
    "cachetools",
    "orjson",
    "geoip2fast",
)


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as file:
        for line in file:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each package in `PACKAGES`, or ``None`` if it is missing."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def source_digest() -> str:
    """
    Return a SHA-256 digest, 16 hex digits, of the imported zerotrust package's ``.py`` files.

    Two runs with the same digest measured the same code, even while the working tree
    changes.
    """
    package = Path(zerotrust.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_revision() -> str | None:
    """Return ``git describe --always --dirty`` for the benchmarks' checkout, or ``None``."""
    git = shutil.which("git")
    if git is None:
        return None
    completed = subprocess.run(  # noqa: S603 -- git from PATH with fixed arguments
        [git, "describe", "--always", "--dirty"],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return completed.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    return {
        "revision": source_revision(),
        "zerotrust_package": str(Path(zerotrust.__file__).parent),
        "zerotrust_source_digest": source_digest(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "httptools": importlib.util.find_spec("httptools") is not None,
        # Other processes on the machine distort wall time more than CPU time.
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def warn_if_sources_changed(before: dict[str, Any]) -> None:
    """Warn when the zerotrust sources changed since ``before`` (a `machine_info` result)."""
    digest = source_digest()
    if digest != before["zerotrust_source_digest"]:
        print(
            f"warning: the zerotrust sources changed during the run (digest "
            f"{before['zerotrust_source_digest']} at the start, {digest} at the end), so "
            "processes started at different times may have measured different code",
            file=sys.stderr,
        )
