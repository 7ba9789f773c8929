# SPDX-License-Identifier: Apache-2.0
"""The grant verifier: accepts a just-in-time grant token in place of a standing role."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jwt
from cachetools import LRUCache

from ..events import EventEmitter
from ..events.access import format_timestamp, new_event_id
from ..exceptions import ConfigurationError, InsecureConfigurationWarning
from ..policy import PathPattern
from ..state.base import StateStore, StateUnavailableError
from ..verifiers.base import Verdict, VerificationContext, Verifier, shared_verdict
from ..verifiers.jwks import StaticKeySet
from ..verifiers.jws import TokenProblem, read_header
from .errors import GrantStoreError
from .store import GrantStore, RevocationState
from .tokens import TOKEN_TYPE, grant_audience

if TYPE_CHECKING:
    from ..engine import Decision
    from ..request import AccessRequest

__all__ = ["GrantMode", "GrantVerifier"]

GrantMode = Literal["required", "alternative"]

_ALGORITHMS = frozenset({"EdDSA", "ES256"})
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~\-]{1,64}")
_MAX_LEEWAY = 300.0
_MAX_HEADER_CHARS = 1024
_REQUIRED_CLAIMS = ["iss", "sub", "aud", "jti", "iat", "nbf", "exp"]
_MAX_VERDICTS = 1024


@dataclass(frozen=True, slots=True)
class _VerifiedGrant:
    """The claims of a grant token whose signature, issuer and claim types were verified."""

    grant_id: str
    subject: str
    segment: str
    methods: frozenset[str]
    patterns: tuple[PathPattern, ...]
    not_before: float
    expires_at: float
    fingerprint: str


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class GrantVerifier(Verifier):
    """
    Verify a just-in-time grant token from a request header.

    A valid grant passes with ``elevates=True``, which replaces the segment's standing
    ``roles``, and binds the request to the grant's subject: the engine denies with
    ``subject_binding_mismatch`` unless the authenticated principal is that subject. Scopes
    the segment requires still apply.

    The token's signature, ``typ``, ``iss``, ``aud``, ``nbf`` and ``exp`` are checked, then
    that the request's segment, method and path are covered (``HEAD`` counts as ``GET``),
    then that the store does not list the grant as revoked. Verified signatures are cached;
    the revocation check runs on every request.

    Args:
        keys: The broker's public keys: ``GrantBroker.public_jwks()``, a JWK, PEM text or a
            ``cryptography`` public key.
        store: The grant store the broker records in.
        issuer: The broker's ``issuer``.
        header: The request header carrying the grant token.
        mode: ``required``: a request without a grant fails with ``grant_missing``.
            ``alternative``: a request without a grant gets ``not_applicable``, so a standing
            role from the identity verifier still allows it.
        events: Where ``grant_used`` events go; none are sent without an emitter.
        leeway: Seconds of clock skew tolerated for ``nbf`` and ``exp``; at most 300.
        algorithms: Signature algorithms accepted, a subset of ``EdDSA`` and ``ES256``.
        use_event_interval: Seconds between two ``grant_used`` events of one grant; uses in
            between are counted in the next event's ``uses``. ``0`` sends one event per use.
        max_token_bytes: Longer grant headers are rejected before any parsing.
        cache_size: Verified signatures kept; the revocation check is never cached.
        required: Defaults to ``True`` in ``required`` mode and ``False`` in ``alternative``
            mode, which needs ``False``.
        single_use: A state store that makes every grant token good for one request: the
            first request that passes every grant check claims the token's ``jti`` until the
            grant expires, and later requests fail with ``grant_replayed``. Share the store
            between workers, or a replay to another worker goes unnoticed. The claim is made
            even when another verifier then denies the request.

    Reason codes: ``grant_missing``, ``grant_invalid``, ``grant_expired``,
    ``grant_not_yet_valid``, ``grant_wrong_segment``, ``grant_method_not_covered``,
    ``grant_path_not_covered``, ``grant_revoked``, ``grant_unknown``,
    ``grant_store_unavailable``, ``grant_replayed``, ``state_unavailable``.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.7 The ``single_use`` argument.
    """

    name = "grant"
    kind = "context"

    def __init__(
        self,
        *,
        keys: Any,
        store: GrantStore,
        issuer: str = "zerotrust-grants",
        header: str = "x-zerotrust-grant",
        mode: GrantMode = "alternative",
        events: EventEmitter | None = None,
        leeway: float = 30.0,
        algorithms: tuple[str, ...] = ("EdDSA", "ES256"),
        use_event_interval: float = 60.0,
        max_token_bytes: int = 4096,
        cache_size: int = 10_000,
        single_use: StateStore | None = None,
        name: str | None = None,
        timeout: float = 2.0,
        required: bool | None = None,
    ) -> None:
        if mode not in ("required", "alternative"):
            message = f"mode must be 'required' or 'alternative', not {mode!r}"
            raise ConfigurationError(message, parameter="mode", value=mode)
        if required is None:
            required = mode == "required"
        if mode == "alternative" and required:
            message = (
                "mode='alternative' lets requests without a grant through to the other "
                "verifiers, so it needs required=False; use mode='required' to demand a grant"
            )
            raise ConfigurationError(message, parameter="required", value=required)
        super().__init__(name=name, timeout=timeout, required=required)
        if not isinstance(store, GrantStore):
            message = f"store must be a GrantStore, not {type(store).__name__}"
            raise ConfigurationError(message, parameter="store", value=type(store).__name__)
        if not isinstance(issuer, str) or not issuer:
            message = f"issuer must be the broker's non-empty issuer, not {issuer!r}"
            raise ConfigurationError(message, parameter="issuer", value=issuer)
        if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header.lower()):
            message = f"header {header!r} must be an HTTP header name"
            raise ConfigurationError(message, parameter="header", value=header)
        if isinstance(leeway, bool) or not 0 <= leeway <= _MAX_LEEWAY:
            message = f"leeway must be between 0 and {_MAX_LEEWAY:g} seconds, not {leeway!r}"
            raise ConfigurationError(message, parameter="leeway", value=leeway)
        if not set(algorithms) <= _ALGORITHMS or not algorithms:
            message = (
                f"algorithms must be a non-empty subset of {sorted(_ALGORITHMS)}, "
                f"not {algorithms!r}"
            )
            raise ConfigurationError(message, parameter="algorithms", value=algorithms)
        if not 0 <= use_event_interval < math.inf:
            message = f"use_event_interval must be 0 or more seconds, not {use_event_interval!r}"
            raise ConfigurationError(
                message, parameter="use_event_interval", value=use_event_interval
            )
        if max_token_bytes < 64 or cache_size < 0:
            message = (
                f"max_token_bytes must be at least 64 and cache_size not negative, not "
                f"{max_token_bytes!r} and {cache_size!r}"
            )
            raise ConfigurationError(message, parameter="max_token_bytes", value=max_token_bytes)
        if leeway > 60:
            warnings.warn(
                f"grant leeway of {leeway:g} s accepts expired grants for over a minute",
                InsecureConfigurationWarning,
                stacklevel=2,
            )

        if single_use is not None and not isinstance(single_use, StateStore):
            message = f"single_use must be a StateStore, not {type(single_use).__name__}"
            raise ConfigurationError(message, parameter="single_use", value=single_use)
        self.single_use = single_use
        self.key_set = StaticKeySet(keys, algorithms=algorithms)
        self.algorithms = self.key_set.algorithms
        self.store = store
        self.issuer = issuer
        self.header = header.lower()
        self.mode: GrantMode = mode
        self.events = events
        self.leeway = float(leeway)
        self.use_event_interval = float(use_event_interval)
        self.max_token_bytes = max_token_bytes
        self._cache: LRUCache[bytes, _VerifiedGrant] | None = (
            LRUCache(maxsize=cache_size) if cache_size else None
        )
        # Per grant: when its last grant_used event was sent, and uses since then.
        self._uses: LRUCache[str, tuple[float, int]] = LRUCache(maxsize=10_000)
        # Grants that passed, by id, until after_decision knows whether the request went through.
        self._passed: LRUCache[str, _VerifiedGrant] = LRUCache(maxsize=1024)
        # The passing verdict of each grant, cleared when full. Dict access needs no lock.
        self._verdicts: dict[str, tuple[_VerifiedGrant, Verdict]] = {}
        self._options: jwt.types.Options = {
            "require": _REQUIRED_CLAIMS,
            "verify_signature": True,
            # Times are checked against request.time below, so the checks are deterministic.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": False,
            "verify_iss": True,
        }

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict | None:
        checked = self._check(request, context)
        if isinstance(checked, Verdict):
            return checked
        if self.single_use is not None:
            return None
        state = self.store.revocation_state_cached(checked.grant_id)
        if state is None:
            return None

        return self._finish(checked, state, request)

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        checked = self._check(request, context)
        if isinstance(checked, Verdict):
            return checked
        first_use = None
        if self.single_use is not None:
            # Started before the revocation read, so both go to the store in one round trip.
            ttl = checked.expires_at + self.leeway - request.time + 1
            first_use = asyncio.ensure_future(
                self.single_use.claim_async("grant-use", checked.grant_id, ttl)
            )
            first_use.add_done_callback(_retrieve)
        try:
            state = self.store.revocation_state_cached(checked.grant_id)
            if state is None:
                state = await self.store.revocation_state_async(checked.grant_id)
        except GrantStoreError as error:
            if first_use is not None:
                first_use.cancel()
            return _failed("grant_store_unavailable", str(error)[:200], checked)
        if state is None:
            if first_use is not None:
                first_use.cancel()
            return _failed("grant_store_unavailable", "the store returned no state", checked)
        if first_use is not None:
            try:
                if not await first_use:
                    return _failed("grant_replayed", "the single-use grant was used", checked)
            except StateUnavailableError as error:
                return _failed("state_unavailable", str(error)[:200], checked)

        return self._finish(checked, state, request)

    def _check(
        self, request: AccessRequest, context: VerificationContext
    ) -> _VerifiedGrant | Verdict:
        """Run every check that needs no I/O; return the grant, or the failed verdict."""
        values = request.headers.getlist(self.header)
        if not values:
            if self.mode == "required":
                return Verdict.failed("grant_missing", f"no {self.header} header")
            return Verdict.not_applicable("grant_missing")
        if len(values) > 1:
            return Verdict.failed("grant_invalid", f"more than one {self.header} header")
        token = values[0].strip()
        if len(token) > self.max_token_bytes:
            return Verdict.failed("grant_invalid", f"grant token of {len(token)} bytes is too long")

        digest = hashlib.sha256(token.encode()).digest()
        grant = self._cache.get(digest) if self._cache is not None else None
        if grant is None:
            try:
                grant = self._decode(token, digest)
            except _Invalid as error:
                return Verdict.failed(
                    error.reason, error.detail, credential_fingerprint=digest.hex()[:16]
                )
            if self._cache is not None:
                self._cache[digest] = grant

        now = request.time
        if now >= grant.expires_at + self.leeway:
            if self._cache is not None:
                self._cache.pop(digest, None)
            detail = f"grant expired at {format_timestamp(grant.expires_at)}"
            return _failed("grant_expired", detail, grant)
        if now < grant.not_before - self.leeway:
            detail = f"grant starts at {format_timestamp(grant.not_before)}"
            return _failed("grant_not_yet_valid", detail, grant)

        if grant.segment != context.segment.name:
            detail = f"grant is for segment {grant.segment!r}, not {context.segment.name!r}"
            return _failed("grant_wrong_segment", detail, grant)
        method = request.method
        # HEAD is GET without the body (RFC 9110 9.3.2), so a grant for GET covers it.
        if method not in grant.methods and not (method == "HEAD" and "GET" in grant.methods):
            detail = f"grant does not cover method {request.method}"
            return _failed("grant_method_not_covered", detail, grant)
        if not any(pattern.matches(request.path) for pattern in grant.patterns):
            detail = f"grant does not cover path {request.path[:200]!r}"
            return _failed("grant_path_not_covered", detail, grant)

        return grant

    def _finish(
        self, grant: _VerifiedGrant, state: RevocationState, request: AccessRequest
    ) -> Verdict:
        if state == "revoked":
            return _failed("grant_revoked", "the grant was revoked", grant)
        if state == "unknown":
            detail = "the grant store has no record of this grant; it may have been purged"
            return _failed("grant_unknown", detail, grant)

        # The use is recorded in after_decision, once the whole request is allowed.
        self._passed[grant.grant_id] = grant

        # The verdict depends on the grant alone, so one object serves all of its requests. The
        # checks above still run on every request.
        entry = self._verdicts.get(grant.grant_id)
        if entry is not None and entry[0] is grant:
            verdict = entry[1]
        else:
            verdict = Verdict.passed(
                bound_subject=grant.subject,
                elevates=True,
                grant_id=grant.grant_id,
                grant_expires_at=grant.expires_at,
            )
            verdict = shared_verdict(verdict)
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[grant.grant_id] = (grant, verdict)
        return verdict

    def _decode(self, token: str, digest: bytes) -> _VerifiedGrant:
        try:
            header = read_header(token, self.algorithms)
        except TokenProblem as problem:
            raise _Invalid("grant_invalid", f"grant token: {problem.detail}") from None
        if header.get("typ") != TOKEN_TYPE:
            raise _Invalid(
                "grant_invalid", f"typ {str(header.get('typ'))[:40]!r} is not {TOKEN_TYPE}"
            )
        alg = header["alg"]
        kid = header.get("kid")
        key = self.key_set.lookup_cached(kid, alg)
        if key is None:
            raise _Invalid("grant_invalid", f"no grant key with kid {str(kid)[:64]!r}")

        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self.issuer,
                options=self._options,
            )
        except jwt.InvalidTokenError as error:
            raise _Invalid("grant_invalid", f"{type(error).__name__}: {error}"[:200]) from None

        return _read_claims(claims, digest)

    def after_decision(self, request: AccessRequest, decision: Decision) -> None:
        """Record a grant use only for a request that goes through, not one denied later."""
        if not decision.lets_through:
            return
        for record in decision.verdicts:
            if record.name == self.name and record.outcome == "pass":
                grant_id = record.verdict.facts.get("grant_id")
                grant = self._passed.get(grant_id) if isinstance(grant_id, str) else None
                if grant is not None:
                    self._record_use(grant, request)
                return

    def _record_use(self, grant: _VerifiedGrant, request: AccessRequest) -> None:
        if self.events is None:
            return
        now = request.time
        last, uses = self._uses.get(grant.grant_id, (-math.inf, 0))
        uses += 1
        if now - last < self.use_event_interval:
            self._uses[grant.grant_id] = (last, uses)
            return
        self._uses[grant.grant_id] = (now, 0)
        self.events.emit(
            {
                "event": "grant_used",
                "timestamp": format_timestamp(now),
                "event_id": new_event_id(now),
                "grant_id": grant.grant_id,
                "subject": grant.subject,
                "segment": grant.segment,
                "not_before": format_timestamp(grant.not_before),
                "expires_at": format_timestamp(grant.expires_at),
                "request_id": request.request_id,
                "method": request.method,
                "path": request.path,
                "uses": uses,
                "credential_fingerprint": grant.fingerprint,
            }
        )


def _read_claims(claims: Mapping[str, Any], digest: bytes) -> _VerifiedGrant:
    """Check the types of the grant claims; the signature and issuer were already verified."""
    grant_id, subject, segment = claims.get("jti"), claims.get("sub"), claims.get("segment")
    if not all(isinstance(value, str) and value for value in (grant_id, subject, segment)):
        raise _Invalid("grant_invalid", "jti, sub and segment must be non-empty strings")
    if claims.get("aud") != grant_audience(str(segment)):
        raise _Invalid("grant_invalid", "aud does not match the grant's segment")
    methods, paths = claims.get("methods"), claims.get("paths")
    if not isinstance(methods, list) or not all(isinstance(item, str) for item in methods):
        raise _Invalid("grant_invalid", "methods must be a list of strings")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise _Invalid("grant_invalid", "paths must be a non-empty list of strings")
    not_before, expires_at = claims.get("nbf"), claims.get("exp")
    if not all(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        for value in (not_before, expires_at)
    ):
        raise _Invalid("grant_invalid", "nbf and exp must be numbers")
    try:
        patterns = tuple(PathPattern(path) for path in paths)
    except ConfigurationError as error:
        raise _Invalid("grant_invalid", str(error)[:200]) from None

    return _VerifiedGrant(
        grant_id=str(grant_id),
        subject=str(subject),
        segment=str(segment),
        methods=frozenset(methods),
        patterns=patterns,
        not_before=float(not_before),  # type: ignore[arg-type]
        expires_at=float(expires_at),  # type: ignore[arg-type]
        fingerprint=digest.hex()[:16],
    )


def _retrieve(task: asyncio.Future[bool]) -> None:
    # A claim whose request timed out still ends; reading its error keeps asyncio quiet.
    if not task.cancelled():
        task.exception()


def _failed(reason: str, detail: str, grant: _VerifiedGrant) -> Verdict:
    return Verdict.failed(
        reason,
        detail,
        grant_id=grant.grant_id,
        credential_fingerprint=grant.fingerprint,
    )
