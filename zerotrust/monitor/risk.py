# SPDX-License-Identifier: Apache-2.0
"""The risk verifier: denies or steps up requests that active risk signals are about."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson

from ..exceptions import ConfigurationError
from ..state.base import StateUnavailableError
from ..verifiers.base import Verdict, VerificationContext, Verifier, VerifierKind
from .signals import RiskSignal, RiskSignals, SignalKind

if TYPE_CHECKING:
    from ..request import AccessRequest, IPAddress

__all__ = ["RiskAction", "RiskVerifier", "network_key"]

RiskAction = Literal["deny", "step_up"]

# Device signals are left out because no verified device id exists while the verifiers run side
# by side. A device id header is client input, which a flagged client can simply leave out.
_KINDS: frozenset[SignalKind] = frozenset({"subject", "client_ip", "network", "credential"})
_DEFAULT_KINDS: tuple[SignalKind, ...] = ("subject", "client_ip", "network", "credential")
_REASONS: dict[SignalKind, str] = {
    "client_ip": "risk_flagged_client_ip",
    "network": "risk_flagged_network",
    "credential": "risk_flagged_credential",
    "subject": "risk_flagged_subject",
}
_STEP_UP_REASON = "risk_step_up_required"
# Verdicts are immutable, so every request without a signal shares one.
_PASSED = Verdict.passed()
# Tokens longer than this are not parsed for claims; JWTVerifier rejects them anyway.
_MAX_TOKEN_CHARS = 8192
_IPV4_PREFIX = 24
_IPV6_PREFIX = 64


def network_key(address: IPAddress | str) -> str:
    """
    Return the network a client address belongs to, as risk signals name it.

    The network is the /24 of an IPv4 address and the /64 of an IPv6 address, written as CIDR
    text such as ``203.0.113.0/24`` or ``2001:db8:1:2::/64``. An IPv4-mapped IPv6 address
    (``::ffff:203.0.113.7``) counts as its IPv4 address.

    Raises:
        ValueError: if ``address`` is text that is not an IP address.
    """
    return _network_key(str(address))


@functools.lru_cache(maxsize=4096)
def _network_key(text: str) -> str:
    # Clients repeat, and building an ip_network costs several microseconds.
    address = ipaddress.ip_address(text)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = _IPV4_PREFIX if address.version == 4 else _IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@functools.lru_cache(maxsize=4096)
def _client_keys(address: IPAddress) -> tuple[tuple[str, ...], str]:
    """Return the address texts and the network key that signals about ``address`` may use."""
    # Formatting an address costs about a microsecond, and clients repeat.
    text = str(address)
    if address.version == 6 and address.ipv4_mapped is not None:
        # Access events record a dual-stack client in IPv6 form, so both forms are keys.
        plain = str(address.ipv4_mapped)
        return (plain, text), _network_key(plain)
    return (text,), _network_key(text)


@dataclass(frozen=True, slots=True)
class _BearerToken:
    """Fingerprint and unverified claims of a bearer token."""

    fingerprint: str
    subject: str | None
    auth_time: float | None
    acr: str | None


class RiskVerifier(Verifier):
    """
    Deny or step up requests that an active risk signal is about.

    On every request the verifier looks up `RiskSignals` for the client address, its network
    (see `network_key`), the fingerprint of the bearer token and the subject the token claims.
    With signals in memory it returns its verdict from `verify_cached` within microseconds.
    With signals in a shared store it reads them all in one round trip, together with the
    other verifiers' reads. When that store is unavailable and the signals fail closed, the
    request is denied with ``state_unavailable`` (403).

    The subject comes from the token's ``sub`` claim *before* any signature check, because the
    identity verifier runs at the same time. Trusting it is safe for a deny: a forged ``sub``
    can only get a request that carries it refused, and an allow still needs the identity
    verifier to pass on its own.

    Anti-lockout: anyone can fail logins in a victim's name, so a subject signal must not lock
    the victim out. A subject signal with ``source_ips`` only affects requests from those
    addresses or their networks. A subject signal without them asks for a step-up, never a
    plain deny, unless ``action="deny"`` and ``allow_subject_lockout=True``.

    A step-up answers 401 with ``WWW-Authenticate: Bearer error="insufficient_user_authentication"``
    (RFC 9470). The request passes again once the token shows a login after the newest signal
    behind the step-up (``auth_time``), and with one of ``acr_values`` when they are given. That
    pass binds the claimed subject (`Verdict.bound_subject`), so the engine denies it unless
    the verified principal is the same subject.

    Args:
        signals: The store that detectors raise signals into.
        action: ``deny`` answers 403 for a flagged request; ``step_up`` answers 401 and asks for
            a fresh login.
        kinds: Which signal kinds to look up: ``subject``, ``client_ip``, ``network`` and
            ``credential``. ``device`` is not supported, because no verified device id exists
            at this point.
        detectors: Names of the detectors whose signals count; ``None`` counts every detector.
        allow_subject_lockout: With ``action="deny"``, deny on a subject signal without source
            addresses too. A subject signal then lets an attacker lock out its victim.
        acr_values: Authentication context classes a step-up login must carry (``acr``); they
            are sent in the challenge. Empty accepts any fresh login.
        name: Name in access events.
        required: Passed to `Verifier`; the verifier never abstains.

    Raises:
        ConfigurationError: for an unknown action or kind, an empty ``kinds``, or
            ``allow_subject_lockout`` without ``action="deny"``.

    Reason codes: ``risk_flagged_client_ip``, ``risk_flagged_network``,
    ``risk_flagged_credential``, ``risk_flagged_subject``, ``risk_step_up_required``,
    ``state_unavailable``.

    Facts of a failure: ``risk_detectors`` and ``risk_anomaly_ids``, the detectors and the
    anomaly events behind it. A pass after a step-up records ``risk_step_up`` as ``True``.

    The verifier is an identity verifier (`kind` ``identity``) whenever it can ask for a
    step-up, because the engine sends a 401 challenge only for identity verifiers. Its denials
    still answer 403 (`Verdict.forbidden`). With ``action="deny"`` and no step-up possible,
    it is a context verifier.
    """

    name = "risk"
    kind: ClassVar[VerifierKind] = "context"

    def __init__(
        self,
        signals: RiskSignals,
        *,
        action: RiskAction = "deny",
        kinds: Iterable[SignalKind] = _DEFAULT_KINDS,
        detectors: Iterable[str] | None = None,
        allow_subject_lockout: bool = False,
        acr_values: Iterable[str] = (),
        name: str | None = None,
        timeout: float = 2.0,
        required: bool = True,
    ) -> None:
        super().__init__(name=name, timeout=timeout, required=required)
        if not isinstance(signals, RiskSignals):
            message = f"signals must be a RiskSignals store, not {type(signals).__name__}"
            raise ConfigurationError(message, parameter="signals", value=signals)
        if action not in ("deny", "step_up"):
            message = f"action must be 'deny' or 'step_up', not {action!r}"
            raise ConfigurationError(message, parameter="action", value=action)
        if allow_subject_lockout and action != "deny":
            message = "allow_subject_lockout=True needs action='deny'; a step-up never locks out"
            raise ConfigurationError(
                message, parameter="allow_subject_lockout", value=allow_subject_lockout
            )

        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)  # type: ignore[assignment]
        for kind in kinds:
            if kind not in _KINDS:
                message = (
                    f"signal kind {kind!r} is not supported; use 'subject', 'client_ip', "
                    "'network' or 'credential'"
                )
                raise ConfigurationError(message, parameter="kinds", value=kind)
        if not kinds:
            message = "kinds must name at least one signal kind, such as 'client_ip'"
            raise ConfigurationError(message, parameter="kinds", value=kinds)

        self.signals = signals
        self.action: RiskAction = action
        self.kinds: frozenset[SignalKind] = frozenset(kinds)
        self.detectors = frozenset(detectors) if detectors is not None else None
        self.allow_subject_lockout = bool(allow_subject_lockout)
        self.acr_values = frozenset(acr_values)
        self._challenge = {"error": "insufficient_user_authentication"}
        if self.acr_values:
            self._challenge["acr_values"] = " ".join(sorted(self.acr_values))

        may_step_up = action == "step_up" or (
            "subject" in self.kinds and not self.allow_subject_lockout
        )
        self.kind = "identity" if may_step_up else "context"  # type: ignore[misc]

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        if self.signals.local_reads:
            return self.check(request)
        token = _read_bearer(request)
        queries, clients = self._queries(request, token)
        try:
            found = await self.signals.active_many(queries)
        except StateUnavailableError as error:
            # A deny, not a 401: a fresh login cannot fix a store that does not respond.
            return Verdict.failed("state_unavailable", str(error)[:200], forbidden=True)

        return self._judge(queries, found, clients, token)

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict | None:
        if not self.signals.local_reads:
            return None
        return self.check(request)

    def check(self, request: AccessRequest) -> Verdict:
        """
        Look up the signals about ``request`` and return the verdict.

        With a shared store this blocks on I/O; the engine calls `verify` instead.
        """
        token = _read_bearer(request)
        queries, clients = self._queries(request, token)
        found = [self.signals.active(kind, key) for kind, key in queries]
        return self._judge(queries, found, clients, token)

    def _queries(
        self, request: AccessRequest, token: _BearerToken | None
    ) -> tuple[list[tuple[SignalKind, str]], tuple[str, ...]]:
        """Return the ``(kind, key)`` lookups for ``request``, and the client address texts."""
        queries: list[tuple[SignalKind, str]] = []
        clients: tuple[str, ...] = ()
        if request.client_ip is not None:
            clients, network = _client_keys(request.client_ip)
            if "client_ip" in self.kinds:
                queries.extend(("client_ip", client) for client in clients)
            if "network" in self.kinds:
                queries.append(("network", network))
        if token is not None:
            if "credential" in self.kinds:
                queries.append(("credential", token.fingerprint))
            if "subject" in self.kinds and token.subject is not None:
                queries.append(("subject", token.subject))
        return queries, clients

    def _judge(
        self,
        queries: list[tuple[SignalKind, str]],
        found: list[tuple[RiskSignal, ...]],
        clients: tuple[str, ...],
        token: _BearerToken | None,
    ) -> Verdict:
        denying: list[RiskSignal] = []
        stepping_up: list[RiskSignal] = []
        for (kind, _), signals in zip(queries, found, strict=True):
            if not signals:
                continue
            if kind == "subject":
                self._sort_subject(signals, clients, denying, stepping_up)
            else:
                self._sort(signals, denying, stepping_up)

        if denying:
            return self._deny(denying)
        if stepping_up:
            return self._step_up(stepping_up, token)
        return _PASSED

    def _counts(self, signal: RiskSignal) -> bool:
        return self.detectors is None or signal.detector in self.detectors

    def _sort(
        self,
        found: tuple[RiskSignal, ...],
        denying: list[RiskSignal],
        stepping_up: list[RiskSignal],
    ) -> None:
        target = denying if self.action == "deny" else stepping_up
        target.extend(signal for signal in found if self._counts(signal))

    def _sort_subject(
        self,
        found: tuple[RiskSignal, ...],
        clients: tuple[str, ...],
        denying: list[RiskSignal],
        stepping_up: list[RiskSignal],
    ) -> None:
        for signal in found:
            if not self._counts(signal):
                continue
            if signal.source_ips:
                # Only the addresses that misbehaved are affected, so the victim elsewhere is not.
                if clients and _from_sources(clients, signal.source_ips):
                    target = denying if self.action == "deny" else stepping_up
                    target.append(signal)
            elif self.action == "deny" and self.allow_subject_lockout:
                denying.append(signal)
            else:
                stepping_up.append(signal)

    def _deny(self, signals: list[RiskSignal]) -> Verdict:
        first = signals[0]
        detail = f"{first.kind} flagged by {first.detector} ({first.reason})"
        return Verdict.failed(
            _REASONS[first.kind],
            detail,
            # An identity verifier's failure is a 401 unless it is marked forbidden.
            forbidden=self.kind == "identity",
            **_facts(signals),
        )

    def _step_up(self, signals: list[RiskSignal], token: _BearerToken | None) -> Verdict:
        newest = max(signal.raised_at for signal in signals)
        if token is not None and token.subject is not None and self._fresh_login(token, newest):
            # NOTE: auth_time and acr are read before the signature check. The bound subject
            # makes the engine deny unless the verified principal is this subject, and a
            # JWTVerifier on the same Authorization header rejects a forged token.
            return Verdict.passed(bound_subject=token.subject, risk_step_up=True)

        first = signals[0]
        detail = f"{first.kind} flagged by {first.detector} ({first.reason}); login again"
        return Verdict.failed(_STEP_UP_REASON, detail, challenge=self._challenge, **_facts(signals))

    def _fresh_login(self, token: _BearerToken, flagged_at: float) -> bool:
        if token.auth_time is None or token.auth_time <= flagged_at:
            return False
        return not self.acr_values or token.acr in self.acr_values


def _facts(signals: list[RiskSignal]) -> dict[str, Any]:
    detectors = sorted({signal.detector for signal in signals})
    anomaly_ids = sorted({signal.anomaly_id for signal in signals if signal.anomaly_id})
    return {"risk_detectors": detectors, "risk_anomaly_ids": anomaly_ids}


def _from_sources(clients: tuple[str, ...], sources: frozenset[str]) -> bool:
    if not sources.isdisjoint(clients):
        return True
    network = _network_key(clients[0])
    for source in sources:
        try:
            if _network_key(source) == network:
                return True
        except ValueError:
            continue
    return False


def _read_bearer(request: AccessRequest) -> _BearerToken | None:
    """Read the bearer token's fingerprint and claims, without verifying anything."""
    values = request.headers.getlist("authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_CHARS:
        return None

    # The same tokens come back on request after request, and decoding the claims costs more
    # than hashing. The digest is the key, so the cache contains no token.
    digest = hashlib.sha256(token.encode()).digest()
    bearer = _BEARERS.get(digest)
    if bearer is None:
        bearer = _parse_bearer(token, digest)
        if len(_BEARERS) >= _MAX_BEARERS:
            _BEARERS.clear()
        _BEARERS[digest] = bearer
    return bearer


# Bearer tokens read so far, by SHA-256 digest. Cleared when full, so always bounded.
_BEARERS: dict[bytes, _BearerToken] = {}
_MAX_BEARERS = 4096


def _parse_bearer(token: str, digest: bytes) -> _BearerToken:
    claims = _unverified_claims(token)
    subject = claims.get("sub")
    auth_time = claims.get("auth_time")
    acr = claims.get("acr")
    return _BearerToken(
        # The same value as token_fingerprint(token), from the digest already computed.
        fingerprint=digest.hex()[:16],
        subject=subject if isinstance(subject, str) and subject else None,
        auth_time=(
            float(auth_time)
            if isinstance(auth_time, int | float) and not isinstance(auth_time, bool)
            else None
        ),
        acr=acr if isinstance(acr, str) else None,
    )


def _unverified_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1]
    try:
        data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = orjson.loads(data)
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}
