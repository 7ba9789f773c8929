# SPDX-License-Identifier: Apache-2.0
"""Policy files: the policy and its middleware settings as reviewable TOML."""

from __future__ import annotations

from ._loader import SUPPORTED_VERSIONS, LoadedPolicy, load_policy, middleware_from_policy_file
from ._review import review_policy
from ._source import PolicyFileError, PolicyProblem, PolicyWarning

__all__ = [
    "SUPPORTED_VERSIONS",
    "LoadedPolicy",
    "PolicyFileError",
    "PolicyProblem",
    "PolicyWarning",
    "load_policy",
    "middleware_from_policy_file",
    "review_policy",
]
