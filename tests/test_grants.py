# SPDX-License-Identifier: Apache-2.0
"""Tests of the grant broker: limits, approval, validation, tokens, events and keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest

from zerotrust.events import EventEmitter, MemorySink
from zerotrust.exceptions import ConfigurationError
from zerotrust.grants import (
    GrantBroker,
    GrantError,
    GrantLimits,
    MemoryGrantStore,
    generate_signing_key,
    load_signing_key,
    write_signing_key,
)
from zerotrust.grants.keys import private_key_to_pem
from zerotrust.grants.tokens import TOKEN_TYPE, grant_audience
from zerotrust.testing import capture_events

NOW = 1_800_000_000.0


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    return Clock()


@pytest.fixture(name="broker")
def fixture_broker(clock: Clock) -> GrantBroker:
    return GrantBroker(
        signing_key=generate_signing_key(),
        store=MemoryGrantStore(clock=clock),
        limits={"admin": GrantLimits(default=600, maximum=1800)},
        clock=clock,
    )


def mint(broker: GrantBroker, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "subject": "bob",
        "segment": "admin",
        "methods": ["GET"],
        "paths": ["/admin/"],
        "reason": "INC-42 restart the worker",
        "requested_by": "bob",
    }
    arguments.update(overrides)
    return broker.mint(**arguments)


def decode(broker: GrantBroker, token: str) -> dict[str, Any]:
    key = jwt.PyJWK(broker.public_jwks()["keys"][0])
    return jwt.decode(
        token,
        key,
        algorithms=[broker.algorithm],
        audience=grant_audience("admin"),
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )


class TestGrantLimits:
    def test_defaults(self) -> None:
        """The default limits are 15 minutes by default and one hour at most."""
        limits = GrantLimits()

        assert 900.0 == limits.default
        assert 3600.0 == limits.maximum

    @pytest.mark.parametrize(
        "arguments",
        [
            {"default": 0},
            {"maximum": -1},
            {"default": float("inf")},
            {"default": float("nan")},
            {"default": True},
            {"default": "900"},
            {"default": 7200, "maximum": 3600},
            {"max_start_delay": 0},
        ],
    )
    def test_invalid(self, arguments: dict[str, Any]) -> None:
        """Limits that are not positive, finite numbers with default <= maximum raise."""
        with pytest.raises(ConfigurationError):
            GrantLimits(**arguments)


class TestBrokerWindow:
    def test_default_duration(self, broker: GrantBroker) -> None:
        """Without a duration, the segment's default applies from now."""
        grant = mint(broker).grant

        assert NOW == grant.not_before
        assert NOW + 600 == grant.expires_at

    def test_default_limits_elsewhere(self, broker: GrantBroker) -> None:
        """A segment without its own limits uses the broker's default limits."""
        grant = mint(broker, segment="billing", paths=["/billing/"]).grant

        assert NOW + 900 == grant.expires_at

    def test_maximum_allowed(self, broker: GrantBroker) -> None:
        """A duration equal to the maximum is granted in full."""
        grant = mint(broker, duration=1800).grant

        assert NOW + 1800 == grant.expires_at

    def test_over_maximum_rejected(self, broker: GrantBroker) -> None:
        """A duration above the maximum is rejected, never shortened, and names the maximum."""
        with pytest.raises(GrantError) as caught:
            mint(broker, duration=1801)

        assert "duration_too_long" == caught.value.reason
        assert "1800" in str(caught.value)
        assert [] == broker.list()

    @pytest.mark.parametrize("duration", [0, -5, 0.5, float("inf"), float("nan"), True, "60"])
    def test_invalid_duration(self, broker: GrantBroker, duration: Any) -> None:
        """Durations that are not at least one finite second are rejected."""
        with pytest.raises(GrantError) as caught:
            mint(broker, duration=duration)

        assert "invalid_duration" == caught.value.reason

    def test_future_start(self, broker: GrantBroker) -> None:
        """A later start shifts the whole window."""
        grant = mint(broker, start=NOW + 3600, duration=60).grant

        assert NOW + 3600 == grant.not_before
        assert NOW + 3660 == grant.expires_at
        assert "scheduled" == grant.status(NOW)

    def test_past_start_rejected(self, broker: GrantBroker) -> None:
        """A start in the past is rejected."""
        with pytest.raises(GrantError) as caught:
            mint(broker, start=NOW - 3600)

        assert "invalid_start" == caught.value.reason

    def test_distant_start_rejected(self, broker: GrantBroker) -> None:
        """A start further away than max_start_delay is rejected."""
        with pytest.raises(GrantError) as caught:
            mint(broker, start=NOW + 2 * 86400)

        assert "invalid_start" == caught.value.reason

    def test_whole_seconds(self, broker: GrantBroker, clock: Clock) -> None:
        """The window is rounded down to whole seconds, never longer than requested."""
        clock.now = NOW + 0.75
        grant = mint(broker, duration=60.5).grant

        assert NOW == grant.not_before
        assert NOW + 60 == grant.expires_at


class TestBrokerValidation:
    @pytest.mark.parametrize("reason", ["", "   ", None])
    def test_reason_required(self, broker: GrantBroker, reason: Any) -> None:
        """A grant without a reason is rejected."""
        with pytest.raises(GrantError) as caught:
            mint(broker, reason=reason)

        assert "reason_required" == caught.value.reason

    def test_reason_too_long(self, broker: GrantBroker) -> None:
        """A reason over 500 characters is rejected."""
        with pytest.raises(GrantError) as caught:
            mint(broker, reason="x" * 501)

        assert "reason_too_long" == caught.value.reason

    def test_reason_control_characters(self, broker: GrantBroker) -> None:
        """A reason with a line break is rejected, so it cannot forge log lines."""
        with pytest.raises(GrantError) as caught:
            mint(broker, reason="fix\nevent=grant_revoked")

        assert "invalid_reason" == caught.value.reason

    def test_reason_stripped(self, broker: GrantBroker) -> None:
        """Surrounding whitespace is removed from the reason."""
        assert "INC-1" == mint(broker, reason="  INC-1 ").grant.reason

    @pytest.mark.parametrize(
        "methods", [[], ["get"], ["GET ", "POST"], ["G ET"], [""], [1], ["X" * 40]]
    )
    def test_invalid_methods(self, broker: GrantBroker, methods: Any) -> None:
        """Methods must be a non-empty list of upper-case HTTP tokens."""
        with pytest.raises(GrantError) as caught:
            mint(broker, methods=methods)

        assert "invalid_methods" == caught.value.reason

    def test_lower_case_method_hint(self, broker: GrantBroker) -> None:
        """A lower-case method gets a hint with the upper-case spelling."""
        with pytest.raises(GrantError, match="'GET'"):
            mint(broker, methods=["get"])

    def test_duplicates_removed(self, broker: GrantBroker) -> None:
        """Repeated methods and paths are stored once, in order."""
        grant = mint(broker, methods=["POST", "GET", "POST"], paths=["/a", "/b/", "/a"]).grant

        assert ("POST", "GET") == grant.methods
        assert ("/a", "/b/") == grant.paths

    def test_single_strings(self, broker: GrantBroker) -> None:
        """A single method or path string counts as a list of one."""
        grant = mint(broker, methods="DELETE", paths="/admin/users/7").grant

        assert ("DELETE",) == grant.methods
        assert ("/admin/users/7",) == grant.paths

    @pytest.mark.parametrize(
        "paths", [[], ["admin"], ["/a//b"], ["/a/../b"], ["/a/x*"], ["/" + "a" * 600], [None]]
    )
    def test_invalid_paths(self, broker: GrantBroker, paths: Any) -> None:
        """Paths must be valid segment path patterns."""
        with pytest.raises(GrantError) as caught:
            mint(broker, paths=paths)

        assert "invalid_paths" == caught.value.reason

    @pytest.mark.parametrize("segment", ["", "a b", "x" * 65, None])
    def test_invalid_segment(self, broker: GrantBroker, segment: Any) -> None:
        """The segment must be a valid segment name."""
        with pytest.raises(GrantError) as caught:
            mint(broker, segment=segment)

        assert "invalid_segment" == caught.value.reason

    @pytest.mark.parametrize("subject", ["", " bob", "bob\n", "x" * 257, None])
    def test_invalid_subject(self, broker: GrantBroker, subject: Any) -> None:
        """The subject must be a non-empty name without control characters."""
        with pytest.raises(GrantError) as caught:
            mint(broker, subject=subject)

        assert "invalid_subject" == caught.value.reason


class TestBrokerApproval:
    @pytest.fixture(name="strict")
    def fixture_strict(self, clock: Clock) -> GrantBroker:
        return GrantBroker(
            signing_key=generate_signing_key("ES256"),
            store=MemoryGrantStore(clock=clock),
            require_approval=True,
            clock=clock,
        )

    def test_mint_needs_approver(self, strict: GrantBroker) -> None:
        """With require_approval, mint without an approver is rejected."""
        with pytest.raises(GrantError) as caught:
            mint(strict)

        assert "approval_required" == caught.value.reason
        assert [] == strict.list(include_inactive=True)

    def test_requester_cannot_approve(self, strict: GrantBroker) -> None:
        """The requester may not approve their own request."""
        with pytest.raises(GrantError) as caught:
            mint(strict, subject="bob", requested_by="carol", approver="carol")

        assert "self_approval" == caught.value.reason

    def test_subject_cannot_approve(self, strict: GrantBroker) -> None:
        """The subject may not approve a grant for themselves."""
        with pytest.raises(GrantError) as caught:
            mint(strict, subject="bob", requested_by="carol", approver="bob")

        assert "self_approval" == caught.value.reason

    def test_other_person_approves(self, strict: GrantBroker) -> None:
        """A third person's approval mints the grant."""
        issued = mint(strict, approver="alice")

        assert "alice" == issued.grant.approved_by
        assert "active" == issued.grant.status(NOW)

    def test_request_then_approve(self, strict: GrantBroker) -> None:
        """A request stays pending until approved, and approval issues its token."""
        pending = strict.request(
            subject="bob",
            segment="admin",
            methods=["GET"],
            paths=["/admin/"],
            reason="INC-7",
            requested_by="bob",
        )
        assert "pending" == pending.status(NOW)

        issued = strict.approve(pending.grant_id, approver="alice")

        assert pending.grant_id == issued.grant.grant_id
        assert "active" == issued.grant.status(NOW)
        assert "alice" == strict.get(pending.grant_id).approved_by  # type: ignore[union-attr]

    def test_approve_self_rejected(self, strict: GrantBroker) -> None:
        """approve() applies the two-person rule too."""
        pending = strict.request(
            subject="bob",
            segment="admin",
            methods=["GET"],
            paths=["/"],
            reason="r",
            requested_by="carol",
        )

        for approver in ("bob", "carol"):
            with pytest.raises(GrantError) as caught:
                strict.approve(pending.grant_id, approver=approver)
            assert "self_approval" == caught.value.reason

    def test_approve_twice_rejected(self, strict: GrantBroker) -> None:
        """An issued grant cannot be approved again."""
        pending = strict.request(
            subject="bob",
            segment="admin",
            methods=["GET"],
            paths=["/"],
            reason="r",
            requested_by="bob",
        )
        strict.approve(pending.grant_id, approver="alice")

        with pytest.raises(GrantError) as caught:
            strict.approve(pending.grant_id, approver="dave")

        assert "grant_active" == caught.value.reason

    def test_approve_unknown(self, strict: GrantBroker) -> None:
        """Approving an unknown grant id raises grant_not_found."""
        with pytest.raises(GrantError) as caught:
            strict.approve("0" * 32, approver="alice")

        assert "grant_not_found" == caught.value.reason

    def test_approve_revoked(self, strict: GrantBroker) -> None:
        """A request revoked before approval cannot be approved."""
        pending = strict.request(
            subject="bob",
            segment="admin",
            methods=["GET"],
            paths=["/"],
            reason="r",
            requested_by="bob",
        )
        strict.revoke(pending.grant_id, revoked_by="alice")

        with pytest.raises(GrantError) as caught:
            strict.approve(pending.grant_id, approver="alice")

        assert "grant_revoked" == caught.value.reason

    def test_approve_expired(self, strict: GrantBroker, clock: Clock) -> None:
        """A request whose window passed cannot be approved."""
        pending = strict.request(
            subject="bob",
            segment="admin",
            methods=["GET"],
            paths=["/"],
            reason="r",
            requested_by="bob",
            duration=60,
        )
        clock.now += 61

        with pytest.raises(GrantError) as caught:
            strict.approve(pending.grant_id, approver="alice")

        assert "grant_expired" == caught.value.reason

    def test_optional_approver_checked(self, broker: GrantBroker) -> None:
        """Without require_approval, a given approver must still be another person."""
        with pytest.raises(GrantError) as caught:
            mint(broker, approver="bob")

        assert "self_approval" == caught.value.reason


class TestBrokerToken:
    def test_claims(self, broker: GrantBroker) -> None:
        """The token carries the grant's id, subject, window and scope."""
        issued = mint(broker, methods=["GET", "POST"], paths=["/admin/users/*"])
        claims = decode(broker, issued.token)

        assert issued.grant.grant_id == claims["jti"]
        assert "bob" == claims["sub"]
        assert "zerotrust-grants" == claims["iss"]
        assert grant_audience("admin") == claims["aud"]
        assert int(NOW) == claims["nbf"]
        assert int(NOW) == claims["iat"]
        assert int(NOW) + 600 == claims["exp"]
        assert "admin" == claims["segment"]
        assert ["GET", "POST"] == claims["methods"]
        assert ["/admin/users/*"] == claims["paths"]

    def test_header(self, broker: GrantBroker) -> None:
        """The token is typed and names the key by its thumbprint."""
        header = jwt.get_unverified_header(mint(broker).token)

        assert TOKEN_TYPE == header["typ"]
        assert broker.key_id == header["kid"]
        assert "EdDSA" == header["alg"]

    def test_es256(self, clock: Clock) -> None:
        """A P-256 key signs with ES256."""
        broker = GrantBroker(
            signing_key=generate_signing_key("ES256"), store=MemoryGrantStore(), clock=clock
        )

        assert "ES256" == jwt.get_unverified_header(mint(broker).token)["alg"]

    def test_unique_ids(self, broker: GrantBroker) -> None:
        """Every grant gets its own 128-bit id."""
        ids = {mint(broker).grant.grant_id for _ in range(50)}

        assert 50 == len(ids)
        assert all(len(grant_id) == 32 for grant_id in ids)

    def test_token_not_in_repr(self, broker: GrantBroker) -> None:
        """The token does not appear in the issued grant's repr."""
        issued = mint(broker)

        assert issued.token not in repr(issued)

    def test_token_not_stored(self, broker: GrantBroker) -> None:
        """The stored record contains no token."""
        issued = mint(broker)

        assert issued.token not in repr(broker.get(issued.grant.grant_id))

    def test_public_jwks_has_no_private_key(self, broker: GrantBroker) -> None:
        """The published key set holds only the public key."""
        (jwk,) = broker.public_jwks()["keys"]

        assert "d" not in jwk
        assert "sig" == jwk["use"]


class TestBrokerRevoke:
    def test_revoke(self, broker: GrantBroker) -> None:
        """A revoked grant records who revoked it, when and why."""
        issued = mint(broker)

        revoked = broker.revoke(issued.grant.grant_id, revoked_by="alice", reason="done")

        assert NOW == revoked.revoked_at
        assert "alice" == revoked.revoked_by
        assert "done" == revoked.revocation_reason
        assert "revoked" == revoked.status(NOW)

    def test_revoke_twice(self, broker: GrantBroker) -> None:
        """A second revocation raises and keeps the first."""
        grant_id = mint(broker).grant.grant_id
        broker.revoke(grant_id, revoked_by="alice")

        with pytest.raises(GrantError) as caught:
            broker.revoke(grant_id, revoked_by="carol")

        assert "grant_already_revoked" == caught.value.reason
        assert "alice" == broker.get(grant_id).revoked_by  # type: ignore[union-attr]

    def test_revoke_unknown(self, broker: GrantBroker) -> None:
        """Revoking an unknown grant raises grant_not_found."""
        with pytest.raises(GrantError) as caught:
            broker.revoke("f" * 32, revoked_by="alice")

        assert "grant_not_found" == caught.value.reason

    def test_list(self, broker: GrantBroker, clock: Clock) -> None:
        """list() shows live grants; include_inactive adds revoked and expired ones."""
        live = mint(broker).grant.grant_id
        revoked = mint(broker).grant.grant_id
        expired = mint(broker, duration=10).grant.grant_id
        broker.revoke(revoked, revoked_by="alice")
        clock.now += 11

        assert [live] == [grant.grant_id for grant in broker.list()]
        assert {live, revoked, expired} == {
            grant.grant_id for grant in broker.list(include_inactive=True)
        }


class TestBrokerEvents:
    @pytest.fixture(name="sink")
    def fixture_sink(self) -> MemorySink:
        return MemorySink()

    @pytest.fixture(name="audited")
    def fixture_audited(self, clock: Clock, sink: MemorySink) -> Any:
        emitter = EventEmitter([sink])
        broker = GrantBroker(
            signing_key=generate_signing_key(),
            store=MemoryGrantStore(clock=clock),
            events=emitter,
            require_approval=True,
            clock=clock,
        )
        yield broker
        emitter.close()

    def test_event_per_action(self, audited: GrantBroker, clock: Clock) -> None:
        """Request, approval, mint, revocation and expiry each emit their own event."""
        with capture_events() as events:
            pending = audited.request(
                subject="bob",
                segment="admin",
                methods=["GET"],
                paths=["/admin/"],
                reason="INC-9",
                requested_by="bob",
                duration=60,
            )
            issued = audited.approve(pending.grant_id, approver="alice")
            other = mint(audited, approver="alice", duration=60).grant
            audited.revoke(other.grant_id, revoked_by="carol", reason="finished")
            clock.now += 61
            reaped = audited.reap()

        kinds = [event["event"] for event in events]
        assert [
            "grant_requested",
            "grant_approved",
            "grant_minted",
            "grant_requested",
            "grant_approved",
            "grant_minted",
            "grant_revoked",
            "grant_expired",
        ] == kinds
        assert [issued.grant.grant_id] == [grant.grant_id for grant in reaped]

    def test_event_fields(self, audited: GrantBroker) -> None:
        """A mint event names the grant, its scope and its people, in RFC 3339 times."""
        with capture_events() as events:
            issued = mint(audited, approver="alice")

        minted = events[-1]
        assert "grant_minted" == minted["event"]
        assert issued.grant.grant_id == minted["grant_id"]
        assert "bob" == minted["subject"]
        assert "admin" == minted["segment"]
        assert ["GET"] == minted["methods"]
        assert ["/admin/"] == minted["paths"]
        assert "2027-01-15T08:00:00.000000Z" == minted["not_before"]
        assert "2027-01-15T08:15:00.000000Z" == minted["expires_at"]
        assert "INC-42 restart the worker" == minted["reason"]
        assert "bob" == minted["requested_by"]
        assert "alice" == minted["approved_by"]
        assert minted["event_id"]
        assert minted["timestamp"].endswith("Z")

    def test_no_token_in_events(self, audited: GrantBroker, sink: MemorySink) -> None:
        """No event, captured or delivered to a sink, contains the token."""
        with capture_events() as events:
            issued = mint(audited, approver="alice")
            audited.revoke(issued.grant.grant_id, revoked_by="alice")
        assert audited.events is not None
        audited.events.flush()

        for event in [*events, *sink.events]:
            assert issued.token not in repr(event)
            assert issued.token.split(".")[2] not in repr(event)

    def test_revoked_event_fields(self, audited: GrantBroker) -> None:
        """The revocation event names who revoked and why."""
        issued = mint(audited, approver="alice")
        with capture_events() as events:
            audited.revoke(issued.grant.grant_id, revoked_by="carol", reason="incident over")

        (event,) = events
        assert "grant_revoked" == event["event"]
        assert "carol" == event["revoked_by"]
        assert "incident over" == event["revocation_reason"]

    def test_failed_mint_emits_nothing(self, audited: GrantBroker) -> None:
        """A rejected request emits no event."""
        with capture_events() as events, pytest.raises(GrantError):
            mint(audited, approver="bob")

        assert [] == events

    def test_reap_once(self, audited: GrantBroker, clock: Clock) -> None:
        """Each expiry is reported once, and revoked grants are not reported as expired."""
        mint(audited, approver="alice", duration=60)
        revoked = mint(audited, approver="alice", duration=60).grant
        audited.revoke(revoked.grant_id, revoked_by="alice")
        clock.now += 61

        assert 1 == len(audited.reap())
        assert [] == audited.reap()

    def test_reap_pending(self, audited: GrantBroker, clock: Clock) -> None:
        """A request that lapsed without approval is reported with was_pending."""
        audited.request(
            subject="bob",
            segment="admin",
            methods=["GET"],
            paths=["/"],
            reason="r",
            requested_by="bob",
            duration=60,
        )
        clock.now += 61
        with capture_events() as events:
            audited.reap()

        assert [True] == [event["was_pending"] for event in events]


class TestKeys:
    def test_pem_round_trip(self, tmp_path: Path) -> None:
        """A key written with write_signing_key loads back, with mode 0600."""
        key = generate_signing_key()
        path = write_signing_key(tmp_path / "grant.pem", key)

        loaded = load_signing_key(path)

        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert private_key_to_pem(key) == private_key_to_pem(loaded)

    def test_no_overwrite(self, tmp_path: Path) -> None:
        """write_signing_key never replaces an existing file."""
        path = write_signing_key(tmp_path / "grant.pem", generate_signing_key())

        with pytest.raises(FileExistsError):
            write_signing_key(path, generate_signing_key())

    @pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
    def test_readable_by_others_rejected(self, tmp_path: Path) -> None:
        """A key file that other users can read is rejected with the chmod fix."""
        path = write_signing_key(tmp_path / "grant.pem", generate_signing_key())
        path.chmod(0o644)

        with pytest.raises(ConfigurationError, match="chmod 600"):
            load_signing_key(path)

    def test_pem_text(self) -> None:
        """PEM text loads directly, and the broker accepts it."""
        pem = private_key_to_pem(generate_signing_key("ES256"))

        broker = GrantBroker(signing_key=pem.decode(), store=MemoryGrantStore())

        assert "ES256" == broker.algorithm

    def test_rsa_rejected(self) -> None:
        """An RSA key is not a grant signing key."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        with pytest.raises(ConfigurationError, match="Ed25519 or EC P-256"):
            GrantBroker(signing_key=key, store=MemoryGrantStore())  # type: ignore[arg-type]

    def test_garbage_pem(self) -> None:
        """Text that is not a private key raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="PEM text"):
            load_signing_key("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")

    def test_unknown_algorithm(self) -> None:
        """generate_signing_key accepts only EdDSA and ES256."""
        with pytest.raises(ConfigurationError):
            generate_signing_key("RS256")  # type: ignore[arg-type]
