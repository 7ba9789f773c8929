# SPDX-License-Identifier: Apache-2.0
"""The package version, in a module of its own so that any module can import it early."""

from __future__ import annotations

__version__ = "0.1.0"
