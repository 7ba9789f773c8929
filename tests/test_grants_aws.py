# SPDX-License-Identifier: Apache-2.0
"""Tests of AWS grant policies: rendering, naming, and provisioning against moto's mock IAM."""

from __future__ import annotations

import calendar
import dataclasses
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerotrust import ConfigurationError, EventEmitter, MemorySink, MissingExtraError
from zerotrust.grants.aws import (
    AwsGrantProvisioner,
    AwsGrantTarget,
    AwsProvisioningError,
    policy_name,
    render_policy,
)
from zerotrust.grants.errors import GrantError
from zerotrust.grants.model import Grant

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
ClientError = pytest.importorskip("botocore.exceptions").ClientError

NOW = 1_800_000_000.0
ISO_NOW = "2027-01-15T08:00:00Z"
READ_REPORTS = AwsGrantTarget(actions=["s3:GetObject"], resources=["arn:aws:s3:::reports/*"])
TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)
IAM_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)


def make_grant(
    grant_id: str = "0190a4b2-7c1d-7e8f-9a0b-1c2d3e4f5a6b",
    *,
    not_before: float = NOW - 60,
    expires_at: float = NOW + 900,
    subject: str = "alice@example.com",
    segment: str = "reports",
) -> Grant:
    return Grant(
        grant_id=grant_id,
        subject=subject,
        segment=segment,
        methods=("GET",),
        paths=("/reports/**",),
        not_before=not_before,
        expires_at=expires_at,
        reason="quarterly audit",
        requested_by="alice@example.com",
        approved_by="bob@example.com",
        created_at=not_before,
    )


class Clock:
    """A settable clock for the provisioner."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="iam")
def fixture_iam(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An IAM client of moto's in-process mock, with a role ``ops`` and a user ``alice``."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM"):
        monkeypatch.delenv(name, raising=False)

    with moto.mock_aws():
        client = boto3.client("iam")
        client.create_role(RoleName="ops", AssumeRolePolicyDocument=TRUST_POLICY)
        client.create_user(UserName="alice")
        yield client


@pytest.fixture(name="sink")
def fixture_sink() -> MemorySink:
    return MemorySink()


@pytest.fixture(name="emitter")
def fixture_emitter(sink: MemorySink) -> Iterator[EventEmitter]:
    emitter = EventEmitter([sink])
    yield emitter
    emitter.close()


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    return Clock()


@pytest.fixture(name="provisioner")
def fixture_provisioner(iam: Any, emitter: EventEmitter, clock: Clock) -> AwsGrantProvisioner:
    return AwsGrantProvisioner(iam, events=emitter, clock=clock)


def events_of(emitter: EventEmitter, sink: MemorySink) -> list[dict[str, Any]]:
    assert emitter.flush()
    return list(sink.events)


def attached_to_role(iam: Any, role: str = "ops") -> list[str]:
    response = iam.list_attached_role_policies(RoleName=role)
    return [policy["PolicyArn"] for policy in response["AttachedPolicies"]]


def local_policies(iam: Any) -> list[str]:
    return [policy["Arn"] for policy in iam.list_policies(Scope="Local")["Policies"]]


class FailingDelete:
    """An IAM client whose DeletePolicy fails with AccessDenied for one ARN."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.failing_arn: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def delete_policy(self, **kwargs: Any) -> Any:
        if kwargs["PolicyArn"] == self.failing_arn:
            error = {"Error": {"Code": "AccessDenied", "Message": "denied by the test"}}
            raise ClientError(error, "DeletePolicy")
        return self.client.delete_policy(**kwargs)


# Hypothesis strategies for targets and grant windows.

_services = st.sampled_from(["s3", "dynamodb", "kms", "secretsmanager", "ec2", "logs"])
_action_names = st.from_regex(r"[A-Z][A-Za-z0-9]{0,20}\*?", fullmatch=True)
_actions = st.builds(lambda service, name: f"{service}:{name}", _services, _action_names)
_resources = st.builds(
    lambda bucket, key: f"arn:aws:s3:::{bucket}/{key}",
    st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9/_*.-]{1,30}", fullmatch=True),
)
_targets = st.builds(
    AwsGrantTarget,
    actions=st.lists(_actions, min_size=1, max_size=8),
    resources=st.lists(_resources, min_size=1, max_size=8),
)
# 2001 to 2100, with fractional seconds, and windows of at least two seconds.
_windows = st.tuples(
    st.floats(min_value=1e9, max_value=4.1e9, allow_nan=False),
    st.floats(min_value=2.0, max_value=86_400.0, allow_nan=False),
).map(lambda pair: (pair[0], pair[0] + pair[1]))


class TestAwsGrantTarget:
    def test_normalises_sorted_unique(self) -> None:
        """Actions and resources are deduplicated and sorted."""
        target = AwsGrantTarget(
            actions=["s3:PutObject", "s3:GetObject", "s3:PutObject"],
            resources=["arn:aws:s3:::b/*", "arn:aws:s3:::a/*", "arn:aws:s3:::a/*"],
        )

        assert ("s3:GetObject", "s3:PutObject") == target.actions
        assert ("arn:aws:s3:::a/*", "arn:aws:s3:::b/*") == target.resources

    @pytest.mark.parametrize(
        "action",
        [
            "s3:GetObject",
            "s3:Get*",
            "s3:List?ucket",
            "secretsmanager:GetSecretValue",
            "execute-api:Invoke",
        ],
    )
    def test_accepts_action(self, action: str) -> None:
        """Scoped actions, with wildcards inside the action name, are valid."""
        target = AwsGrantTarget(actions=[action], resources=["arn:aws:s3:::reports/*"])

        assert (action,) == target.actions

    @pytest.mark.parametrize(
        "resource",
        [
            "arn:aws:s3:::reports/*",
            "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
            "arn:aws:ec2:*:*:instance/*",
            "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/1234abcd",
            "arn:aws:iam::aws:policy/ReadOnlyAccess",
        ],
    )
    def test_accepts_resource(self, resource: str) -> None:
        """ARNs of several services and partitions are valid."""
        target = AwsGrantTarget(actions=["s3:GetObject"], resources=[resource])

        assert (resource,) == target.resources

    @pytest.mark.parametrize(
        "action",
        [
            # Wildcards that need allow_wildcards=True.
            "*",
            "s3:*",
            # Malformed.
            "GetObject",
            "s3:",
            ":GetObject",
            "S3:GetObject",
            "s3:Get Object",
            "s3:GetObject\n",
            "*:GetObject",
            "",
        ],
    )
    def test_rejects_action(self, action: str) -> None:
        """Bare wildcards and malformed actions raise ConfigurationError."""
        with pytest.raises(ConfigurationError) as caught:
            AwsGrantTarget(actions=[action], resources=["arn:aws:s3:::reports/*"])

        assert "actions" == caught.value.parameter
        assert action == caught.value.value

    @pytest.mark.parametrize(
        "resource",
        [
            "*",
            "reports/*",
            "arn:aws:s3",
            "arn:aws:s3:::",
            "arn:aws:s3:::reports /*",
            "arn:aws:dynamodb:us-east-1:12345:table/orders",
            "arn:gcp:s3:::reports/*",
            "arn:aws:s3:::" + "a" * 2048,
        ],
    )
    def test_rejects_resource(self, resource: str) -> None:
        """A bare ``*`` and strings that are not ARNs raise ConfigurationError."""
        with pytest.raises(ConfigurationError) as caught:
            AwsGrantTarget(actions=["s3:GetObject"], resources=[resource])

        assert "resources" == caught.value.parameter

    def test_wildcards_when_allowed(self) -> None:
        """allow_wildcards=True accepts a bare ``*`` action and resource and ``s3:*``."""
        target = AwsGrantTarget(actions=["*", "s3:*"], resources=["*"], allow_wildcards=True)

        assert ("*", "s3:*") == target.actions
        assert ("*",) == target.resources

    @pytest.mark.parametrize(
        ("actions", "resources"),
        [
            ([], ["arn:aws:s3:::reports/*"]),
            (["s3:GetObject"], []),
            ("s3:GetObject", ["arn:aws:s3:::reports/*"]),
            (["s3:GetObject"], [42]),
        ],
    )
    def test_rejects_empty_or_not_list(self, actions: Any, resources: Any) -> None:
        """Empty lists, a bare string and non-string entries raise ConfigurationError."""
        with pytest.raises(ConfigurationError):
            AwsGrantTarget(actions=actions, resources=resources)


class TestRenderPolicy:
    def test_document(self) -> None:
        """The document has one Allow statement with the target and the grant's window."""
        grant = make_grant(not_before=NOW, expires_at=NOW + 900)

        document = render_policy(grant, READ_REPORTS)

        assert {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ZeroTrustGrant",
                    "Effect": "Allow",
                    "Action": ["s3:GetObject"],
                    "Resource": ["arn:aws:s3:::reports/*"],
                    "Condition": {
                        "DateGreaterThan": {"aws:CurrentTime": ISO_NOW},
                        "DateLessThan": {"aws:CurrentTime": "2027-01-15T08:15:00Z"},
                    },
                }
            ],
        } == document

    def test_window_rounds_inwards(self) -> None:
        """Fractional bounds round inwards, so the policy never outlasts the grant."""
        grant = make_grant(not_before=NOW - 0.5, expires_at=NOW + 10.9)

        condition = render_policy(grant, READ_REPORTS)["Statement"][0]["Condition"]

        assert ISO_NOW == condition["DateGreaterThan"]["aws:CurrentTime"]
        assert "2027-01-15T08:00:10Z" == condition["DateLessThan"]["aws:CurrentTime"]

    @pytest.mark.parametrize(
        ("not_before", "expires_at"),
        [
            (NOW + 0.2, NOW + 0.8),
            (NOW, NOW),
            (NOW + 10, NOW),
            (float("nan"), NOW),
            (NOW, float("inf")),
        ],
    )
    def test_rejects_window(self, not_before: float, expires_at: float) -> None:
        """A window without a whole second, or with non-finite bounds, raises."""
        grant = make_grant(not_before=not_before, expires_at=expires_at)

        with pytest.raises(ConfigurationError) as caught:
            render_policy(grant, READ_REPORTS)

        assert "grant" == caught.value.parameter

    def test_rejects_oversized(self) -> None:
        """A document over the 6144-character IAM limit raises ConfigurationError."""
        resources = [f"arn:aws:s3:::bucket-{index:04d}/*" for index in range(300)]
        target = AwsGrantTarget(actions=["s3:GetObject"], resources=resources)

        with pytest.raises(ConfigurationError, match="6144"):
            render_policy(make_grant(), target)

    def test_deterministic(self) -> None:
        """Targets listing the same entries in another order render the same document."""
        first = AwsGrantTarget(
            actions=["s3:PutObject", "s3:GetObject"],
            resources=["arn:aws:s3:::b/*", "arn:aws:s3:::a/*"],
        )
        second = AwsGrantTarget(
            actions=["s3:GetObject", "s3:PutObject", "s3:GetObject"],
            resources=["arn:aws:s3:::a/*", "arn:aws:s3:::b/*"],
        )

        assert render_policy(make_grant(), first) == render_policy(make_grant(), second)

    @given(target=_targets, window=_windows)
    def test_only_target_and_window(
        self, target: AwsGrantTarget, window: tuple[float, float]
    ) -> None:
        """Every rendered action and resource is in the target, and the bounds are the grant's."""
        grant = make_grant(not_before=window[0], expires_at=window[1])

        document = render_policy(grant, target)

        statements = document["Statement"]
        assert 1 == len(statements)
        statement = statements[0]
        assert "Allow" == statement["Effect"]
        assert set(statement["Action"]) <= set(target.actions)
        assert set(statement["Resource"]) <= set(target.resources)
        assert sorted(set(target.actions)) == statement["Action"]
        assert sorted(set(target.resources)) == statement["Resource"]
        assert {"Sid", "Effect", "Action", "Resource", "Condition"} == set(statement)
        condition = statement["Condition"]
        start = calendar.timegm(
            time.strptime(condition["DateGreaterThan"]["aws:CurrentTime"], "%Y-%m-%dT%H:%M:%SZ")
        )
        end = calendar.timegm(
            time.strptime(condition["DateLessThan"]["aws:CurrentTime"], "%Y-%m-%dT%H:%M:%SZ")
        )
        assert math.ceil(grant.not_before) == start
        assert math.floor(grant.expires_at) == end


class TestPolicyName:
    def test_plain_id(self) -> None:
        """A lower-case UUID is used as it is."""
        name = policy_name("0190a4b2-7c1d-7e8f-9a0b-1c2d3e4f5a6b")

        assert "zerotrust-grant-0190a4b2-7c1d-7e8f-9a0b-1c2d3e4f5a6b" == name

    def test_escapes_unsafe(self) -> None:
        """Characters IAM rejects become ``=XX`` escapes."""
        assert "zerotrust-grant-team=2Fops=20=C3=A9" == policy_name("team/ops é")

    @pytest.mark.parametrize(
        "pair",
        [
            ("a/b", "a_b"),
            ("a=2Fb", "a/b"),
            ("Grant", "grant"),
            ("a b", "a=20b"),
            ("x" * 200, "x" * 201),
        ],
    )
    def test_distinct_ids_distinct_names(self, pair: tuple[str, str]) -> None:
        """Ids that differ, even only in case or by an unsafe character, get distinct names."""
        first, second = (policy_name(grant_id) for grant_id in pair)

        assert first.lower() != second.lower()

    @given(grant_id=st.text(min_size=1, max_size=300))
    def test_always_valid(self, grant_id: str) -> None:
        """Every id gives a name that IAM accepts."""
        name = policy_name(grant_id)

        assert IAM_NAME.fullmatch(name) is not None
        assert name.startswith("zerotrust-grant-")

    @given(ids=st.lists(st.text(min_size=1, max_size=150), min_size=2, max_size=2, unique=True))
    def test_injective(self, ids: list[str]) -> None:
        """Two different ids never share a name, compared case-insensitively as IAM does."""
        assert policy_name(ids[0]).lower() != policy_name(ids[1]).lower()

    def test_rejects_empty(self) -> None:
        """An empty grant id raises ConfigurationError."""
        with pytest.raises(ConfigurationError):
            policy_name("")


class TestProvisionerConstruction:
    def test_missing_boto3(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without boto3 the constructor names the extra to install."""
        monkeypatch.setitem(sys.modules, "boto3", None)

        with pytest.raises(MissingExtraError) as caught:
            AwsGrantProvisioner()

        assert "aws" == caught.value.extra
        assert "AwsGrantProvisioner" == caught.value.feature
        assert "zerotrust-middleware[aws]" in str(caught.value)

    @pytest.mark.parametrize(
        "path", ["/", "zerotrust/", "/zerotrust", "/zero trust/", "/zero*/", ""]
    )
    def test_rejects_path(self, iam: Any, path: str) -> None:
        """The root path and invalid IAM paths raise ConfigurationError."""
        with pytest.raises(ConfigurationError) as caught:
            AwsGrantProvisioner(iam, path=path)

        assert "path" == caught.value.parameter


class TestProvision:
    def test_role(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """The policy is created under /zerotrust/, attached to the role, and matches."""
        grant = make_grant()

        arn = provisioner.provision(grant, READ_REPORTS, role_name="ops")

        policy = iam.get_policy(PolicyArn=arn)["Policy"]
        assert "/zerotrust/" == policy["Path"]
        assert policy_name(grant.grant_id) == policy["PolicyName"]
        assert [arn] == attached_to_role(iam)
        version = iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])
        stored = version["PolicyVersion"]["Document"]
        if isinstance(stored, str):
            stored = json.loads(stored)
        assert render_policy(grant, READ_REPORTS) == stored

    def test_tags_and_description(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """Tags and description record grant id, subject and expiry."""
        grant = make_grant(not_before=NOW, expires_at=NOW + 900)

        arn = provisioner.provision(grant, READ_REPORTS, role_name="ops")

        tags = {tag["Key"]: tag["Value"] for tag in iam.list_policy_tags(PolicyArn=arn)["Tags"]}
        assert {
            "zerotrust:grant-id": grant.grant_id,
            "zerotrust:subject": "alice@example.com",
            "zerotrust:not-before": ISO_NOW,
            "zerotrust:expires-at": "2027-01-15T08:15:00Z",
        } == tags
        description = iam.get_policy(PolicyArn=arn)["Policy"]["Description"]
        assert grant.grant_id in description
        assert "alice@example.com" in description
        assert "2027-01-15T08:15:00Z" in description

    def test_user(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """A grant can be attached to a user instead of a role."""
        arn = provisioner.provision(make_grant(), READ_REPORTS, user_name="alice")

        attached = iam.list_attached_user_policies(UserName="alice")["AttachedPolicies"]
        assert [arn] == [policy["PolicyArn"] for policy in attached]
        assert [] == attached_to_role(iam)

    def test_target_from_segment(self, iam: Any, clock: Clock) -> None:
        """Without a target, the segment's target from targets= is used."""
        provisioner = AwsGrantProvisioner(iam, targets={"reports": READ_REPORTS}, clock=clock)

        arn = provisioner.provision(make_grant(), role_name="ops")

        assert [arn] == attached_to_role(iam)

    def test_no_target(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """A grant whose segment has no target raises before any IAM call."""
        with pytest.raises(ConfigurationError) as caught:
            provisioner.provision(make_grant(segment="billing"), role_name="ops")

        assert "target" == caught.value.parameter
        assert [] == local_policies(iam)

    @pytest.mark.parametrize(
        "entities", [{}, {"role_name": "ops", "user_name": "alice"}], ids=["none", "both"]
    )
    def test_exactly_one_entity(
        self, provisioner: AwsGrantProvisioner, iam: Any, entities: dict[str, str]
    ) -> None:
        """Neither or both of role_name and user_name raise ConfigurationError."""
        with pytest.raises(ConfigurationError):
            provisioner.provision(make_grant(), READ_REPORTS, **entities)

        assert [] == local_policies(iam)

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"not_before": NOW - 900, "expires_at": NOW - 1}, "grant_expired"),
            ({"revoked_at": NOW - 1, "revoked_by": "carol@example.com"}, "grant_revoked"),
            ({"pending": True, "approved_by": None}, "grant_pending"),
        ],
    )
    def test_rejects_inactive(
        self, provisioner: AwsGrantProvisioner, iam: Any, changes: dict[str, Any], reason: str
    ) -> None:
        """Expired, revoked and unapproved grants are not provisioned."""
        grant = dataclasses.replace(make_grant(), **changes)

        with pytest.raises(GrantError) as caught:
            provisioner.provision(grant, READ_REPORTS, role_name="ops")

        assert reason == caught.value.reason
        assert [] == local_policies(iam)

    def test_scheduled(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """A grant that starts later is provisioned; its condition keeps it inert until then."""
        grant = make_grant(not_before=NOW + 3600, expires_at=NOW + 7200)

        arn = provisioner.provision(grant, READ_REPORTS, role_name="ops")

        assert [arn] == attached_to_role(iam)

    def test_attach_failure_cleans_up(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """When the role does not exist, the new policy is deleted and the error raised."""
        with pytest.raises(AwsProvisioningError) as caught:
            provisioner.provision(make_grant(), READ_REPORTS, role_name="missing")

        assert "NoSuchEntity" == caught.value.code
        assert "AttachRolePolicy" == caught.value.operation
        assert [] == local_policies(iam)

    def test_same_grant_twice(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """Provisioning a grant twice raises and leaves the first policy in place."""
        grant = make_grant()
        arn = provisioner.provision(grant, READ_REPORTS, role_name="ops")

        with pytest.raises(AwsProvisioningError) as caught:
            provisioner.provision(grant, READ_REPORTS, user_name="alice")

        assert "EntityAlreadyExists" == caught.value.code
        assert [arn] == local_policies(iam)
        assert [arn] == attached_to_role(iam)

    def test_similar_ids(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """Grant ids that only differ by unsafe characters get separate policies."""
        first = provisioner.provision(make_grant("team/1"), READ_REPORTS, role_name="ops")
        second = provisioner.provision(make_grant("team_1"), READ_REPORTS, role_name="ops")

        assert first != second
        assert sorted([first, second]) == sorted(attached_to_role(iam))

    def test_event(
        self, provisioner: AwsGrantProvisioner, emitter: EventEmitter, sink: MemorySink
    ) -> None:
        """Provisioning emits one grant_cloud_provisioned event."""
        grant = make_grant()

        arn = provisioner.provision(grant, READ_REPORTS, role_name="ops")

        [event] = events_of(emitter, sink)
        assert "grant_cloud_provisioned" == event["event"]
        assert grant.grant_id == event["grant_id"]
        assert arn == event["policy_arn"]
        assert "role/ops" == event["entity"]
        assert "alice@example.com" == event["subject"]
        assert "2027-01-15T08:15:00.000000Z" == event["expires_at"]
        assert "event_id" in event
        assert "timestamp" in event


class TestReap:
    def test_before_expiry(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """Before expiry, reap removes nothing."""
        arn = provisioner.provision(make_grant(), READ_REPORTS, role_name="ops")

        assert [] == provisioner.reap()
        assert [] == provisioner.reap(NOW + 899)
        assert [arn] == attached_to_role(iam)

    def test_after_expiry(
        self, provisioner: AwsGrantProvisioner, iam: Any, emitter: EventEmitter, sink: MemorySink
    ) -> None:
        """At expiry, reap detaches and deletes the policy and emits one event."""
        grant = make_grant()
        arn = provisioner.provision(grant, READ_REPORTS, role_name="ops")

        reaped = provisioner.reap(NOW + 900)

        assert [arn] == reaped
        assert [] == attached_to_role(iam)
        assert [] == local_policies(iam)
        reap_events = [e for e in events_of(emitter, sink) if e["event"] == "grant_cloud_reaped"]
        assert 1 == len(reap_events)
        assert grant.grant_id == reap_events[0]["grant_id"]
        assert arn == reap_events[0]["policy_arn"]
        assert ["role/ops"] == reap_events[0]["entities"]

    def test_uses_clock(self, provisioner: AwsGrantProvisioner, iam: Any, clock: Clock) -> None:
        """Without now=, reap uses the provisioner's clock."""
        arn = provisioner.provision(make_grant(), READ_REPORTS, role_name="ops")
        clock.now = NOW + 901

        assert [arn] == provisioner.reap()

    def test_idempotent(self, provisioner: AwsGrantProvisioner) -> None:
        """A second reap after success removes nothing."""
        provisioner.provision(make_grant(), READ_REPORTS, role_name="ops")

        provisioner.reap(NOW + 900)

        assert [] == provisioner.reap(NOW + 900)

    def test_only_expired(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """Of two grants, only the expired one is removed."""
        short = provisioner.provision(
            make_grant("short", expires_at=NOW + 60), READ_REPORTS, role_name="ops"
        )
        long = provisioner.provision(
            make_grant("long", expires_at=NOW + 3600), READ_REPORTS, role_name="ops"
        )

        assert [short] == provisioner.reap(NOW + 120)
        assert [long] == attached_to_role(iam)

    def test_every_entity_and_version(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """Reap detaches from roles, users and groups and deletes extra versions."""
        arn = provisioner.provision(make_grant(), READ_REPORTS, role_name="ops")
        iam.attach_user_policy(UserName="alice", PolicyArn=arn)
        iam.create_group(GroupName="auditors")
        iam.attach_group_policy(GroupName="auditors", PolicyArn=arn)
        document = json.dumps(render_policy(make_grant(), READ_REPORTS))
        iam.create_policy_version(PolicyArn=arn, PolicyDocument=document, SetAsDefault=False)

        assert [arn] == provisioner.reap(NOW + 900)
        assert [] == local_policies(iam)
        assert [] == iam.list_attached_user_policies(UserName="alice")["AttachedPolicies"]
        assert [] == iam.list_attached_group_policies(GroupName="auditors")["AttachedPolicies"]

    def test_ignores_foreign_policies(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """Policies outside the path, or under it without grant tags, are never touched."""
        document = json.dumps(render_policy(make_grant(), READ_REPORTS))
        outside = iam.create_policy(PolicyName="team-readonly", PolicyDocument=document)
        untagged = iam.create_policy(
            PolicyName="hand-made", Path="/zerotrust/", PolicyDocument=document
        )
        # An expiry tag alone does not make a policy ours: the grant-id tag is required.
        expiry_only = iam.create_policy(
            PolicyName="expiry-only",
            Path="/zerotrust/",
            PolicyDocument=document,
            Tags=[{"Key": "zerotrust:expires-at", "Value": "2001-01-01T00:00:00Z"}],
        )
        expected = sorted(policy["Policy"]["Arn"] for policy in (outside, untagged, expiry_only))

        assert [] == provisioner.reap(NOW + 10**6)
        assert expected == sorted(local_policies(iam))

    def test_invalid_expiry_tag(
        self, provisioner: AwsGrantProvisioner, iam: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A policy whose expiry tag does not parse is kept, and a warning is logged."""
        arn = provisioner.provision(make_grant(), READ_REPORTS, role_name="ops")
        iam.tag_policy(PolicyArn=arn, Tags=[{"Key": "zerotrust:expires-at", "Value": "soon"}])

        with caplog.at_level(logging.WARNING, logger="zerotrust.grants.aws"):
            reaped = provisioner.reap(NOW + 10**6)

        assert [] == reaped
        assert [arn] == attached_to_role(iam)
        assert "soon" in caplog.text

    def test_failure_skips_one(self, iam: Any, clock: Clock) -> None:
        """When one policy cannot be deleted, reap still removes the others."""
        failing = FailingDelete(iam)
        provisioner = AwsGrantProvisioner(failing, clock=clock)
        stuck = provisioner.provision(make_grant("stuck"), READ_REPORTS, role_name="ops")
        other = provisioner.provision(make_grant("other"), READ_REPORTS, role_name="ops")
        failing.failing_arn = stuck

        assert [other] == provisioner.reap(NOW + 900)
        assert [stuck] == local_policies(iam)

        failing.failing_arn = None
        assert [stuck] == provisioner.reap(NOW + 900)

    def test_own_path_only(self, iam: Any, clock: Clock) -> None:
        """A provisioner with another path does not reap the default path's policies."""
        default = AwsGrantProvisioner(iam, clock=clock)
        arn = default.provision(make_grant(), READ_REPORTS, role_name="ops")
        other = AwsGrantProvisioner(iam, path="/other-team/", clock=clock)

        assert [] == other.reap(NOW + 900)
        assert [arn] == attached_to_role(iam)


class TestRevoke:
    def test_removes_now(
        self, provisioner: AwsGrantProvisioner, iam: Any, emitter: EventEmitter, sink: MemorySink
    ) -> None:
        """Revoke detaches and deletes the policy before expiry and emits one event."""
        grant = make_grant("team/1")
        arn = provisioner.provision(grant, READ_REPORTS, role_name="ops")

        assert arn == provisioner.revoke("team/1")
        assert [] == attached_to_role(iam)
        assert [] == local_policies(iam)
        [event] = [e for e in events_of(emitter, sink) if e["event"] == "grant_cloud_revoked"]
        assert "team/1" == event["grant_id"]
        assert arn == event["policy_arn"]
        assert ["role/ops"] == event["entities"]

    def test_unknown(self, provisioner: AwsGrantProvisioner) -> None:
        """Revoking a grant without a policy returns None."""
        assert provisioner.revoke("no-such-grant") is None

    def test_idempotent(self, provisioner: AwsGrantProvisioner) -> None:
        """A second revoke of the same grant returns None."""
        provisioner.provision(make_grant(), READ_REPORTS, role_name="ops")
        provisioner.revoke(make_grant().grant_id)

        assert provisioner.revoke(make_grant().grant_id) is None

    def test_only_that_grant(self, provisioner: AwsGrantProvisioner, iam: Any) -> None:
        """Revoking one grant leaves a grant with a similar id in place."""
        provisioner.provision(make_grant("team/1"), READ_REPORTS, role_name="ops")
        kept = provisioner.provision(make_grant("team_1"), READ_REPORTS, role_name="ops")

        provisioner.revoke("team/1")

        assert [kept] == attached_to_role(iam)


class TestEvents:
    def test_no_secrets(
        self, iam: Any, emitter: EventEmitter, sink: MemorySink, clock: Clock
    ) -> None:
        """No event contains the AWS credentials or the policy document."""
        provisioner = AwsGrantProvisioner(iam, events=emitter, clock=clock)
        arn = provisioner.provision(make_grant(), READ_REPORTS, role_name="ops")
        provisioner.reap(NOW + 900)

        text = json.dumps(events_of(emitter, sink))
        assert arn in text
        assert "testing" not in text
        assert "s3:GetObject" not in text
