# SPDX-License-Identifier: Apache-2.0
"""Grants as AWS IAM managed policies: render, provision, reap when they expire, revoke."""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..events.access import format_timestamp, new_event_id
from ..exceptions import ConfigurationError, InfrastructureError, MissingExtraError
from .errors import GrantError
from .model import Grant

if TYPE_CHECKING:
    from ..events.emitter import EventEmitter

__all__ = [
    "DEFAULT_PATH",
    "AwsGrantProvisioner",
    "AwsGrantTarget",
    "AwsProvisioningError",
    "policy_name",
    "render_policy",
]

logger = logging.getLogger("zerotrust.grants.aws")

DEFAULT_PATH = "/zerotrust/"
POLICY_NAME_PREFIX = "zerotrust-grant-"
TAG_GRANT_ID = "zerotrust:grant-id"
TAG_SUBJECT = "zerotrust:subject"
TAG_NOT_BEFORE = "zerotrust:not-before"
TAG_EXPIRES_AT = "zerotrust:expires-at"

# Limits from the IAM User Guide page "IAM and AWS STS quotas" and the CreatePolicy reference.
_MAX_POLICY_NAME = 128
_MAX_POLICY_SIZE = 6144  # characters of a managed policy document, not counting whitespace
_MAX_DESCRIPTION = 1000
_MAX_TAG_VALUE = 256
_MAX_PATH = 512
_MAX_ARN = 2048

# A service prefix, then an action name of letters and digits, where `*` and `?` match.
_ACTION = re.compile(r"[a-z0-9-]+:[A-Za-z0-9*?]+")
# The form is arn:partition:service:region:account:resource. S3 ARNs leave region and account
# empty, and AWS managed policies use "aws" as the account.
_ARN = re.compile(r"arn:aws[a-z-]*:[a-z0-9-]+:([a-z0-9-]*|\*):(\d{12}|aws|\*)?:[\x21-\x7e]+")
# IAM paths are printable ASCII between slashes, without "*".
_PATH = re.compile(r"/([\x21-\x29\x2b-\x7e]+/)?")
# Characters a policy name keeps as they are: IAM allows these plus upper-case letters and "=".
# IAM compares names case-insensitively, so upper-case letters are escaped like "=" to keep
# ids that differ only in case apart.
_NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_+,.@-")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 _.:/=+\-@]")
_DESCRIPTION_UNSAFE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class AwsGrantTarget:
    """
    The AWS actions and resources that one grant, or every grant of one segment, covers.

    Actions and resources are deduplicated and sorted, so equal targets render equal policies.

    Args:
        actions: IAM actions as ``service:Action``; ``*`` and ``?`` may match inside the action
            name, as in ``s3:Get*``.
        resources: Resource ARNs, with wildcards where IAM allows them.
        allow_wildcards: Accept a bare ``*`` action or resource and whole-service actions such
            as ``s3:*``.

            .. warning::
                A bare ``*`` turns a scoped grant into standing administrator access for the
                grant's lifetime. Leave this off unless the grant is meant to be that broad.

    Raises:
        ConfigurationError: if a list is empty or an entry is not a valid action or ARN.

    .. versionadded:: 0.1.0
    """

    actions: Sequence[str]
    resources: Sequence[str]
    allow_wildcards: bool = False

    def __post_init__(self) -> None:
        actions = _normalise(self.actions, "actions")
        resources = _normalise(self.resources, "resources")
        for action in actions:
            _check_action(action, self.allow_wildcards)
        for resource in resources:
            _check_resource(resource, self.allow_wildcards)

        # The dataclass is frozen, so the normalised tuples are stored with object.__setattr__.
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "resources", resources)


def _normalise(values: Iterable[str], parameter: str) -> tuple[str, ...]:
    if isinstance(values, str):
        message = f"AwsGrantTarget {parameter} must be a list of strings, not the string {values!r}"
        raise ConfigurationError(message, parameter=parameter, value=values)
    items = tuple(values)
    if not items:
        message = f"AwsGrantTarget {parameter} is empty: give at least one entry"
        raise ConfigurationError(message, parameter=parameter, value=items)
    for item in items:
        if not isinstance(item, str):
            message = f"AwsGrantTarget {parameter} entry {item!r} is not a string"
            raise ConfigurationError(message, parameter=parameter, value=item)

    return tuple(sorted(set(items)))


def _check_action(action: str, allow_wildcards: bool) -> None:
    if action == "*" or action.endswith(":*"):
        if allow_wildcards:
            return
        message = (
            f"AwsGrantTarget action {action!r} allows every action of a service: list the "
            "actions the grant needs, or pass allow_wildcards=True"
        )
        raise ConfigurationError(message, parameter="actions", value=action)
    if _ACTION.fullmatch(action) is None:
        message = f"invalid IAM action {action!r}: expected service:Action, such as s3:GetObject"
        raise ConfigurationError(message, parameter="actions", value=action)


def _check_resource(resource: str, allow_wildcards: bool) -> None:
    if resource == "*":
        if allow_wildcards:
            return
        message = (
            "AwsGrantTarget resource '*' matches every resource: list the ARNs the grant "
            "needs, or pass allow_wildcards=True"
        )
        raise ConfigurationError(message, parameter="resources", value=resource)
    if len(resource) > _MAX_ARN or _ARN.fullmatch(resource) is None:
        message = (
            f"invalid resource ARN {resource!r}: expected arn:partition:service:region:account:"
            "resource, such as arn:aws:s3:::reports/*"
        )
        raise ConfigurationError(message, parameter="resources", value=resource)


def render_policy(grant: Grant, target: AwsGrantTarget) -> dict[str, Any]:
    """
    Render the IAM policy document of ``grant``: one Allow statement, valid only in its window.

    The window is rounded inwards to whole seconds, because ``aws:CurrentTime`` conditions
    compare at second precision: the policy never allows anything before ``not_before`` or
    from ``expires_at`` on.

    Raises:
        ConfigurationError: if the window has less than one whole second, or the document
            exceeds the IAM size limit for managed policies.

    .. versionadded:: 0.1.0
    """
    start, end = _window(grant)
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ZeroTrustGrant",
                "Effect": "Allow",
                "Action": list(target.actions),
                "Resource": list(target.resources),
                "Condition": {
                    "DateGreaterThan": {"aws:CurrentTime": _iso(start)},
                    "DateLessThan": {"aws:CurrentTime": _iso(end)},
                },
            }
        ],
    }

    size = len(json.dumps(document, separators=(",", ":")))
    if size > _MAX_POLICY_SIZE:
        message = (
            f"the IAM policy of grant {grant.grant_id!r} has {size} characters, more than the "
            f"{_MAX_POLICY_SIZE} IAM allows: use fewer actions and resources, or wildcards"
        )
        raise ConfigurationError(message, parameter="target", value=size)

    return document


def _window(grant: Grant) -> tuple[int, int]:
    if not (math.isfinite(grant.not_before) and math.isfinite(grant.expires_at)):
        message = (
            f"grant {grant.grant_id!r} has a non-finite window: not_before={grant.not_before!r}, "
            f"expires_at={grant.expires_at!r}"
        )
        raise ConfigurationError(message, parameter="grant", value=grant.grant_id)
    start = math.ceil(grant.not_before)
    end = math.floor(grant.expires_at)
    if end <= start:
        message = (
            f"grant {grant.grant_id!r} is valid for less than one whole second "
            f"({grant.not_before!r} to {grant.expires_at!r}), so no IAM condition can express it"
        )
        raise ConfigurationError(message, parameter="grant", value=grant.grant_id)

    return start, end


def _iso(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def _parse_iso(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def policy_name(grant_id: str) -> str:
    """
    Return the IAM policy name of a grant: ``zerotrust-grant-`` and the grant id, made safe.

    IAM names allow only ``[A-Za-z0-9_+=,.@-]`` and 128 characters, and IAM compares them
    case-insensitively. Upper-case letters, ``=`` and all other characters outside that set
    become ``=XX`` (UTF-8 bytes in upper-case hex), so distinct ids keep distinct names even
    when compared case-insensitively. An id too long for the limit is cut and followed by
    ``=_`` and a SHA-256 prefix of the whole id. An escaped id never contains ``=_``, so the
    two forms cannot collide.

    .. versionadded:: 0.1.0
    """
    if not grant_id:
        message = "grant_id is empty: every grant needs an id to name its IAM policy"
        raise ConfigurationError(message, parameter="grant_id", value=grant_id)

    escaped = "".join(_escape(character) for character in grant_id)
    room = _MAX_POLICY_NAME - len(POLICY_NAME_PREFIX)
    if len(escaped) <= room:
        return POLICY_NAME_PREFIX + escaped

    digest = hashlib.sha256(grant_id.encode()).hexdigest()[:32]
    return POLICY_NAME_PREFIX + escaped[: room - len(digest) - 2] + "=_" + digest


def _escape(character: str) -> str:
    if character in _NAME_SAFE:
        return character
    return "".join(f"={byte:02X}" for byte in character.encode())


class AwsProvisioningError(InfrastructureError):
    """
    An IAM call of `AwsGrantProvisioner` failed.

    Attributes:
        operation: The IAM operation, such as ``CreatePolicy``.
        code: The AWS error code, such as ``NoSuchEntity`` or ``AccessDenied``.

    .. versionadded:: 0.1.0
    """

    def __init__(self, operation: str, code: str, detail: str) -> None:
        super().__init__(f"IAM {operation} failed with {code}: {detail}")
        self.operation = operation
        self.code = code


class AwsGrantProvisioner:
    """
    Turn grants into IAM managed policies attached to one role or user, and remove them again.

    Every policy lives under ``path`` and carries tags with the grant id, subject and window,
    so `reap` and `revoke` find and touch only the policies this class created.

    Args:
        iam_client: A boto3 IAM client; ``boto3.client("iam")`` by default.
        path: The IAM path of every grant policy. It must not be ``/``, because the reaper
            lists everything under it.
        targets: The AWS target of each segment, for `provision` calls without one.
        events: Where ``grant_cloud_*`` events go; none are emitted without it.
        clock: Seconds since the epoch, for expiry checks.

    Raises:
        MissingExtraError: if boto3 is not installed.
        ConfigurationError: if ``path`` is not a valid IAM path below ``/``.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        iam_client: Any = None,
        *,
        path: str = DEFAULT_PATH,
        targets: Mapping[str, AwsGrantTarget] | None = None,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.exceptions import ClientError  # type: ignore[import-untyped]
        except ImportError:
            raise MissingExtraError("AwsGrantProvisioner", "aws") from None
        if path == "/" or len(path) > _MAX_PATH or _PATH.fullmatch(path) is None:
            message = (
                f"invalid IAM path {path!r} for grant policies: use a dedicated path that starts "
                f"and ends with '/', such as {DEFAULT_PATH!r}"
            )
            raise ConfigurationError(message, parameter="path", value=path)

        self.iam = iam_client if iam_client is not None else boto3.client("iam")
        self.path = path
        self.targets = dict(targets or {})
        self.events = events
        self.clock = clock
        self._client_error: type[Exception] = ClientError

    def provision(
        self,
        grant: Grant,
        target: AwsGrantTarget | None = None,
        *,
        role_name: str | None = None,
        user_name: str | None = None,
    ) -> str:
        """
        Create the policy of ``grant`` and attach it to exactly one role or user.

        If attaching fails, the new policy is deleted again before the error is raised.

        Returns:
            The ARN of the new policy.

        Raises:
            ConfigurationError: if not exactly one of ``role_name`` and ``user_name`` is given,
                or the grant has no target.
            GrantError: if the grant is pending approval, expired or revoked; the reason is
                ``grant_pending``, ``grant_expired`` or ``grant_revoked``.
            AwsProvisioningError: if an IAM call fails, including when the policy exists.
        """
        if (role_name is None) == (user_name is None):
            message = "provision needs exactly one of role_name= and user_name="
            raise ConfigurationError(message, parameter="role_name", value=role_name)
        if target is None:
            target = self.targets.get(grant.segment)
        if target is None:
            message = (
                f"no AWS target for grant {grant.grant_id!r} in segment {grant.segment!r}: pass "
                "target= or add the segment to targets="
            )
            raise ConfigurationError(message, parameter="target", value=grant.segment)
        status = grant.status(self.clock())
        if status not in ("active", "scheduled"):
            message = (
                f"grant {grant.grant_id!r} is {status}: only approved grants that are active or "
                "scheduled can be provisioned"
            )
            raise GrantError(f"grant_{status}", message, grant_id=grant.grant_id)

        document = render_policy(grant, target)
        response = self._call(
            "CreatePolicy",
            self.iam.create_policy,
            PolicyName=policy_name(grant.grant_id),
            Path=self.path,
            PolicyDocument=json.dumps(document, sort_keys=True),
            Description=_description(grant, document),
            Tags=_tags(grant, document),
        )
        arn: str = response["Policy"]["Arn"]

        entity = f"role/{role_name}" if role_name is not None else f"user/{user_name}"
        try:
            if role_name is not None:
                self._call(
                    "AttachRolePolicy",
                    self.iam.attach_role_policy,
                    RoleName=role_name,
                    PolicyArn=arn,
                )
            else:
                self._call(
                    "AttachUserPolicy",
                    self.iam.attach_user_policy,
                    UserName=user_name,
                    PolicyArn=arn,
                )
        except AwsProvisioningError:
            self._delete_unattached(arn)
            raise

        self._emit(
            "grant_cloud_provisioned",
            grant_id=grant.grant_id,
            subject=grant.subject,
            segment=grant.segment,
            policy_arn=arn,
            entity=entity,
            not_before=format_timestamp(grant.not_before),
            expires_at=format_timestamp(grant.expires_at),
        )

        return arn

    def reap(self, now: float | None = None) -> list[str]:
        """
        Remove every grant policy whose recorded expiry is at or before ``now``.

        A policy that fails to be removed is logged and left for the next run, so one failure
        does not stop the others. Calling it again after success removes nothing.

        Returns:
            The ARNs of the policies removed by this call.
        """
        now = self.clock() if now is None else now
        reaped: list[str] = []
        for policy in self._policies():
            arn = policy["Arn"]
            tags = self._tags_of(arn)
            if tags is None:
                continue
            expires_at = _recorded_expiry(arn, tags)
            if expires_at is None or expires_at > now:
                continue

            try:
                entities = self._remove(arn)
            except AwsProvisioningError:
                logger.exception(
                    "removing expired grant policy %s failed", arn, extra={"policy_arn": arn}
                )
                continue
            if entities is None:
                continue
            reaped.append(arn)
            self._emit(
                "grant_cloud_reaped",
                grant_id=tags.get(TAG_GRANT_ID),
                subject=tags.get(TAG_SUBJECT),
                policy_arn=arn,
                entities=entities,
                expires_at=tags.get(TAG_EXPIRES_AT),
            )

        return reaped

    def revoke(self, grant_id: str) -> str | None:
        """
        Remove the policy of ``grant_id`` now, whatever its expiry.

        Returns:
            The ARN of the removed policy, or ``None`` when there was none.

        Raises:
            AwsProvisioningError: if an IAM call fails.
        """
        name = policy_name(grant_id)
        for policy in self._policies():
            if policy["PolicyName"] != name:
                continue
            arn: str = policy["Arn"]
            entities = self._remove(arn)
            if entities is None:
                return None
            self._emit("grant_cloud_revoked", grant_id=grant_id, policy_arn=arn, entities=entities)
            return arn

        return None

    def _policies(self) -> Iterator[dict[str, Any]]:
        paginator = self.iam.get_paginator("list_policies")
        pages = paginator.paginate(Scope="Local", PathPrefix=self.path, OnlyAttached=False)
        for page in self._pages("ListPolicies", pages):
            yield from page["Policies"]

    def _tags_of(self, arn: str) -> dict[str, str] | None:
        try:
            response = self._call("ListPolicyTags", self.iam.list_policy_tags, PolicyArn=arn)
        except AwsProvisioningError as error:
            if error.code == "NoSuchEntity":
                return None
            raise
        tags = {tag["Key"]: tag["Value"] for tag in response.get("Tags", [])}
        if TAG_GRANT_ID not in tags:
            # A policy under our path without this tag was not created here, so it is never reaped.
            return None

        return tags

    def _remove(self, arn: str) -> list[str] | None:
        """Detach and delete the policy, returning the entities, or ``None`` if it was gone."""
        try:
            entities = self._detach_all(arn)
            self._delete_versions(arn)
            self._call("DeletePolicy", self.iam.delete_policy, PolicyArn=arn)
        except AwsProvisioningError as error:
            # A concurrent reap or revoke removed it first, which is the outcome we want.
            if error.code == "NoSuchEntity":
                return None
            raise

        return entities

    def _detach_all(self, arn: str) -> list[str]:
        paginator = self.iam.get_paginator("list_entities_for_policy")
        detached: list[str] = []
        for page in self._pages("ListEntitiesForPolicy", paginator.paginate(PolicyArn=arn)):
            for role in page.get("PolicyRoles", []):
                name = role["RoleName"]
                self._call(
                    "DetachRolePolicy", self.iam.detach_role_policy, RoleName=name, PolicyArn=arn
                )
                detached.append(f"role/{name}")
            for user in page.get("PolicyUsers", []):
                name = user["UserName"]
                self._call(
                    "DetachUserPolicy", self.iam.detach_user_policy, UserName=name, PolicyArn=arn
                )
                detached.append(f"user/{name}")
            for group in page.get("PolicyGroups", []):
                name = group["GroupName"]
                self._call(
                    "DetachGroupPolicy", self.iam.detach_group_policy, GroupName=name, PolicyArn=arn
                )
                detached.append(f"group/{name}")

        return sorted(detached)

    def _delete_versions(self, arn: str) -> None:
        # DeletePolicy fails while non-default versions exist. We create only one version, but an
        # operator may have added more by hand.
        response = self._call("ListPolicyVersions", self.iam.list_policy_versions, PolicyArn=arn)
        for version in response["Versions"]:
            if not version["IsDefaultVersion"]:
                self._call(
                    "DeletePolicyVersion",
                    self.iam.delete_policy_version,
                    PolicyArn=arn,
                    VersionId=version["VersionId"],
                )

    def _delete_unattached(self, arn: str) -> None:
        try:
            self._call("DeletePolicy", self.iam.delete_policy, PolicyArn=arn)
        except AwsProvisioningError:
            # The caller needs the attach error. The reaper removes this policy after expiry.
            logger.exception(
                "deleting unattached grant policy %s failed", arn, extra={"policy_arn": arn}
            )

    def _call(self, operation: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except self._client_error as error:
            raise _provisioning_error(operation, error) from error

    def _pages(self, operation: str, pages: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(pages)
        while True:
            try:
                page = next(iterator)
            except StopIteration:
                return
            except self._client_error as error:
                raise _provisioning_error(operation, error) from error
            yield page

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.events is None:
            return
        now = self.clock()
        self.events.emit(
            {
                "event": kind,
                "timestamp": format_timestamp(now),
                "event_id": new_event_id(now),
                **fields,
            }
        )


def _provisioning_error(operation: str, error: Any) -> AwsProvisioningError:
    details = getattr(error, "response", {}).get("Error", {})
    return AwsProvisioningError(
        operation, details.get("Code", "Unknown"), details.get("Message", str(error))
    )


def _recorded_expiry(arn: str, tags: Mapping[str, str]) -> float | None:
    text = tags.get(TAG_EXPIRES_AT)
    try:
        return _parse_iso(text) if text is not None else None
    except ValueError:
        logger.warning(
            "grant policy %s has an invalid %s tag %r, so reap keeps it: fix or delete the tag",
            arn,
            TAG_EXPIRES_AT,
            text,
        )
        return None


def _tags(grant: Grant, document: Mapping[str, Any]) -> list[dict[str, str]]:
    condition = document["Statement"][0]["Condition"]
    values = {
        TAG_GRANT_ID: grant.grant_id,
        TAG_SUBJECT: grant.subject,
        TAG_NOT_BEFORE: condition["DateGreaterThan"]["aws:CurrentTime"],
        TAG_EXPIRES_AT: condition["DateLessThan"]["aws:CurrentTime"],
    }
    # Tag values allow few characters, so unsafe ones become "_". The policy name is the lookup key.
    return [
        {"Key": key, "Value": _TAG_UNSAFE.sub("_", value)[:_MAX_TAG_VALUE]}
        for key, value in values.items()
    ]


def _description(grant: Grant, document: Mapping[str, Any]) -> str:
    expiry = document["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"]
    text = f"zerotrust grant {grant.grant_id} for {grant.subject}, expires {expiry}"
    return _DESCRIPTION_UNSAFE.sub("_", text)[:_MAX_DESCRIPTION]
