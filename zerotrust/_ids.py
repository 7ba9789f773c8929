# SPDX-License-Identifier: Apache-2.0
"""A private random source for request and event ids."""

from __future__ import annotations

import os
import random

__all__ = ["random_bits"]

# Ids must be unique, not secret, so a fast non-cryptographic generator serves: os.urandom costs
# tens of microseconds per call on some virtual machines. A private instance, seeded from the OS,
# keeps ids unique when the application seeds or replaces the global random module.
_generator = random.Random(os.urandom(32))  # noqa: S311 -- ids are not secrets


def _reseed() -> None:
    # A forked worker must not repeat its parent's sequence.
    _generator.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)

random_bits = _generator.getrandbits
