# SPDX-License-Identifier: Apache-2.0
"""Continuous monitoring: detectors over the access-event stream and the risk signals they raise."""

from __future__ import annotations

from .detectors import (
    CredentialStuffingDetector,
    DeniedBurstDetector,
    Detector,
    ImpossibleTravelDetector,
    LateralMovementDetector,
    TokenReplayDetector,
    default_detectors,
    run_detectors,
)
from .monitor import MonitorSink
from .risk import RiskAction, RiskVerifier, network_key
from .signals import RiskSignal, RiskSignals, SignalKind

__all__ = [
    "CredentialStuffingDetector",
    "DeniedBurstDetector",
    "Detector",
    "ImpossibleTravelDetector",
    "LateralMovementDetector",
    "MonitorSink",
    "RiskAction",
    "RiskSignal",
    "RiskSignals",
    "RiskVerifier",
    "SignalKind",
    "TokenReplayDetector",
    "default_detectors",
    "network_key",
    "run_detectors",
]
