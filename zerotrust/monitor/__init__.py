# SPDX-License-Identifier: Apache-2.0
"""Continuous monitoring: detectors over the access-event stream and the risk signals they raise."""

from __future__ import annotations

from .signals import RiskSignal, RiskSignals, SignalKind

__all__ = ["RiskSignal", "RiskSignals", "SignalKind"]
