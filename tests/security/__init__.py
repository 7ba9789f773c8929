# SPDX-License-Identifier: Apache-2.0
"""Attack suite: each module replays one class of real bypass against the middleware."""
