# SPDX-License-Identifier: Apache-2.0
"""Segments (zones of an app) and the policy that picks the one a request falls in."""

from __future__ import annotations

import re
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .exceptions import ConfigurationError, InsecureConfigurationWarning

if TYPE_CHECKING:
    from .verifiers.base import Verifier

__all__ = ["Mode", "PathPattern", "Policy", "Segment"]

Mode = Literal["enforce", "monitor"]

_METHOD = re.compile(r"[A-Z]{1,20}")
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.\-]*[a-z0-9])?")
_SEGMENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_PATTERN_SEGMENT = re.compile(r"[^/*?]*")


class PathPattern:
    """
    One path rule of a segment, compiled once.

    Three forms, most specific first:

    - exact: ``/healthz`` matches only ``/healthz``;
    - glob: ``/users/*/profile`` where ``*`` matches one non-empty path segment and a final
      ``**`` matches the rest of the path (including nothing);
    - prefix: ``/api/`` matches ``/api`` and everything below it, but not ``/apiary``.

    Raises:
        ConfigurationError: if the pattern is empty, relative or has dot segments, repeated
            slashes or a ``*`` inside a segment.
    """

    __slots__ = ("_exact", "_prefix", "_regex", "kind", "pattern", "specificity")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            message = f"segment path {pattern!r} must be a string that starts with '/'"
            raise ConfigurationError(message, parameter="paths", value=pattern)
        parts = pattern.split("/")[1:]
        if "//" in pattern or any(part in (".", "..") for part in parts):
            message = f"segment path {pattern!r} must not contain '//', '.' or '..' segments"
            raise ConfigurationError(message, parameter="paths", value=pattern)

        self.pattern = pattern
        self._exact = ""
        self._prefix = ""
        self._regex: re.Pattern[str] | None = None
        literal_length = len(pattern.replace("*", ""))

        if "*" in pattern:
            self.kind = "glob"
            self._regex = _compile_glob(pattern, parts)
            self.specificity = (1, literal_length)
        elif pattern.endswith("/") and pattern != "/":
            self.kind = "prefix"
            self._prefix = pattern
            self._exact = pattern[:-1]
            self.specificity = (0, literal_length)
        elif pattern == "/":
            self.kind = "prefix"
            self._prefix = "/"
            self.specificity = (0, 0)
        else:
            self.kind = "exact"
            self._exact = pattern
            self.specificity = (2, literal_length)

    def matches(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self._exact
        if self.kind == "prefix":
            return path.startswith(self._prefix) or path == self._exact
        assert self._regex is not None
        return self._regex.fullmatch(path) is not None

    def __repr__(self) -> str:
        return f"PathPattern({self.pattern!r})"


def _compile_glob(pattern: str, parts: list[str]) -> re.Pattern[str]:
    pieces: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**" and last:
            pieces.append("(?:/.*)?")
            continue
        if part == "*":
            pieces.append("/[^/]+")
            continue
        if "*" in part:
            message = (
                f"segment path {pattern!r}: '*' must be a whole segment, and '**' the last one"
            )
            raise ConfigurationError(message, parameter="paths", value=pattern)
        pieces.append("/" + re.escape(part))

    return re.compile("".join(pieces))


@dataclass(frozen=True, slots=True, eq=False)
class Segment:
    """
    A zone of the application with its own verifiers and requirements.

    Args:
        name: Short identifier recorded in every access event, such as ``api``.
        paths: Path rules (see `PathPattern`), matched against the normalised path inside the app.
        hosts: Host names the segment applies to; ``*.example.com`` matches one or more labels.
            ``None`` means any host.
        methods: HTTP methods the segment applies to; ``None`` means any. ``GET`` implies ``HEAD``.
        public: ``True`` lets requests through without an identity. Must be explicit.
        verifiers: Verifiers run for each request in this segment, concurrently.
        scopes: Scopes every request needs (all of them), either one list for every method or
            a mapping from method to list. With a mapping, a method that is not listed is denied
            unless a ``"*"`` entry gives the default. ``HEAD`` falls back to ``GET``.
        roles: Roles of which the principal needs at least one.
        mode: ``enforce`` denies; ``monitor`` records what would be denied and lets it through.
        max_auth_age: Seconds since the user last authenticated (the token's ``auth_time``)
            beyond which the request needs a fresh login (step-up, RFC 9470).
        acr_values: Authentication context classes of which the token's ``acr`` must be one.
        amr: Authentication methods that the token's ``amr`` must all contain, such as
            ``["mfa"]``.

    Raises:
        ConfigurationError: for an invalid name, an empty path list, an unknown mode, a method or
            host that is not valid, or a protected segment without verifiers.
    """

    name: str
    paths: tuple[PathPattern, ...]
    hosts: frozenset[str] | None
    methods: frozenset[str] | None
    public: bool
    verifiers: tuple[Verifier, ...]
    scopes: Mapping[str, frozenset[str]]
    roles: frozenset[str]
    mode: Mode
    max_auth_age: float | None
    acr_values: frozenset[str]
    amr: frozenset[str]

    def __init__(
        self,
        name: str,
        *,
        paths: Iterable[str],
        hosts: Iterable[str] | None = None,
        methods: Iterable[str] | None = None,
        public: bool = False,
        verifiers: Iterable[Verifier] = (),
        scopes: Collection[str] | Mapping[str, Collection[str]] | None = None,
        roles: Collection[str] = (),
        mode: Mode = "enforce",
        max_auth_age: float | None = None,
        acr_values: Collection[str] = (),
        amr: Collection[str] = (),
    ) -> None:
        if not isinstance(name, str) or not _SEGMENT_NAME.fullmatch(name):
            message = f"segment name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
            raise ConfigurationError(message, parameter="name", value=name)
        if isinstance(paths, str):
            paths = [paths]
        patterns = tuple(PathPattern(path) for path in paths)
        if not patterns:
            message = f"segment {name!r} needs at least one path"
            raise ConfigurationError(message, parameter=f"{name}.paths", value=[])
        if mode not in ("enforce", "monitor"):
            message = f"segment {name!r}: mode must be 'enforce' or 'monitor', not {mode!r}"
            raise ConfigurationError(message, parameter=f"{name}.mode", value=mode)
        if not isinstance(public, bool):
            message = f"segment {name!r}: public must be True or False, not {public!r}"
            raise ConfigurationError(message, parameter=f"{name}.public", value=public)

        verifier_tuple = tuple(verifiers)
        _check_verifiers(name, verifier_tuple)
        if not public and not verifier_tuple:
            message = (
                f"segment {name!r} is not public and has no verifiers, so it would deny every "
                "request: add a verifier, or pass public=True"
            )
            raise ConfigurationError(message, parameter=f"{name}.verifiers", value=[])
        if max_auth_age is not None and (
            isinstance(max_auth_age, bool)
            or not isinstance(max_auth_age, int | float)
            or not 0 < max_auth_age < float("inf")
        ):
            message = (
                f"segment {name!r}: max_auth_age must be a positive number of seconds, "
                f"not {max_auth_age!r}"
            )
            raise ConfigurationError(message, parameter=f"{name}.max_auth_age", value=max_auth_age)
        if public and (scopes or roles or max_auth_age is not None or acr_values or amr):
            message = (
                f"segment {name!r} is public, so it cannot require scopes, roles or a recent, "
                "strong authentication: "
                "remove public=True or the requirements"
            )
            raise ConfigurationError(message, parameter=f"{name}.public", value=public)
        if mode == "monitor":
            warnings.warn(
                f"segment {name!r} is in monitor mode: denials are recorded but not enforced",
                InsecureConfigurationWarning,
                stacklevel=2,
            )

        set_attribute = object.__setattr__
        set_attribute(self, "name", name)
        set_attribute(self, "paths", patterns)
        set_attribute(self, "hosts", _parse_hosts(name, hosts))
        set_attribute(self, "methods", _parse_methods(name, methods))
        set_attribute(self, "public", public)
        set_attribute(self, "verifiers", verifier_tuple)
        set_attribute(self, "scopes", _parse_scopes(name, scopes))
        set_attribute(self, "roles", frozenset(_parse_names(name, "roles", roles)))
        set_attribute(self, "mode", mode)
        set_attribute(self, "max_auth_age", None if max_auth_age is None else float(max_auth_age))
        set_attribute(self, "acr_values", frozenset(_parse_names(name, "acr_values", acr_values)))
        set_attribute(self, "amr", frozenset(_parse_names(name, "amr", amr)))

    def required_scopes(self, method: str) -> frozenset[str] | None:
        """Return the scopes a request with ``method`` needs; ``None`` if the method is denied."""
        scopes = self.scopes
        if method in scopes:
            return scopes[method]
        if method == "HEAD" and "GET" in scopes:
            return scopes["GET"]

        return scopes.get("*")

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, paths={[p.pattern for p in self.paths]!r})"


def _check_verifiers(segment: str, verifiers: tuple[Verifier, ...]) -> None:
    from .verifiers.base import Verifier

    names: set[str] = set()
    for verifier in verifiers:
        if not isinstance(verifier, Verifier):
            message = f"segment {segment!r}: {verifier!r} is not a zerotrust Verifier instance"
            raise ConfigurationError(message, parameter=f"{segment}.verifiers", value=verifier)
        if verifier.name in names:
            message = (
                f"segment {segment!r} has two verifiers named {verifier.name!r}: "
                "give one of them another name=..."
            )
            raise ConfigurationError(message, parameter=f"{segment}.verifiers", value=verifier.name)
        names.add(verifier.name)


def _parse_names(segment: str, parameter: str, values: Collection[str]) -> list[str]:
    if isinstance(values, str):
        values = [values]
    names = list(values)
    for value in names:
        if not isinstance(value, str) or not value or value != value.strip():
            message = f"segment {segment!r}: {parameter} entry {value!r} must be a non-empty string"
            raise ConfigurationError(message, parameter=f"{segment}.{parameter}", value=value)

    return names


def _parse_methods(segment: str, methods: Iterable[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str):
        methods = [methods]
    parsed = {method.upper() for method in methods if isinstance(method, str)}
    for method in parsed:
        if not _METHOD.fullmatch(method):
            message = f"segment {segment!r}: {method!r} is not an HTTP method"
            raise ConfigurationError(message, parameter=f"{segment}.methods", value=method)
    if not parsed:
        message = f"segment {segment!r}: methods must not be empty; use None for any method"
        raise ConfigurationError(message, parameter=f"{segment}.methods", value=methods)
    if "GET" in parsed:
        parsed.add("HEAD")

    return frozenset(parsed)


def _parse_hosts(segment: str, hosts: Iterable[str] | None) -> frozenset[str] | None:
    if hosts is None:
        return None
    if isinstance(hosts, str):
        hosts = [hosts]
    parsed = frozenset(host.lower() for host in hosts if isinstance(host, str))
    for host in parsed:
        if not _HOST.fullmatch(host):
            message = f"segment {segment!r}: {host!r} is not a host name or '*.domain' pattern"
            raise ConfigurationError(message, parameter=f"{segment}.hosts", value=host)
    if not parsed:
        message = f"segment {segment!r}: hosts must not be empty; use None for any host"
        raise ConfigurationError(message, parameter=f"{segment}.hosts", value=hosts)

    return parsed


def _parse_scopes(
    segment: str, scopes: Collection[str] | Mapping[str, Collection[str]] | None
) -> Mapping[str, frozenset[str]]:
    if scopes is None:
        return {"*": frozenset()}
    if not isinstance(scopes, Mapping):
        return {"*": _check_scope_names(segment, _parse_names(segment, "scopes", scopes))}

    parsed: dict[str, frozenset[str]] = {}
    for method, required in scopes.items():
        key = method.upper() if isinstance(method, str) else method
        if key != "*" and not (isinstance(key, str) and _METHOD.fullmatch(key)):
            message = f"segment {segment!r}: scopes key {method!r} is not an HTTP method or '*'"
            raise ConfigurationError(message, parameter=f"{segment}.scopes", value=method)
        names = _parse_names(segment, f"scopes[{key}]", required)
        parsed[key] = _check_scope_names(segment, names)

    return parsed


def _check_scope_names(segment: str, names: list[str]) -> frozenset[str]:
    for scope in names:
        # A token's scope claim is space-separated (RFC 6749, section 3.3), so a scope with
        # whitespace in it can never be held.
        if any(character.isspace() for character in scope):
            message = (
                f"segment {segment!r}: scope {scope!r} contains whitespace, so no token can "
                f"hold it: list each scope on its own, as {scope.split()!r}"
            )
            raise ConfigurationError(message, parameter=f"{segment}.scopes", value=scope)

    return frozenset(names)


def _host_matches(hosts: frozenset[str], host: str) -> bool:
    if host in hosts:
        return True
    for pattern in hosts:
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True

    return False


class Policy:
    """
    The segments of an application; the most specific segment that matches a request wins.

    Specificity compares, in order: the kind of path rule (exact, then glob, then prefix), the
    length of its literal part, whether the segment names hosts, and whether it names methods.
    A request that no segment matches is denied.

    Raises:
        ConfigurationError: if there are no segments, two segments share a name, or two
            segments have a path rule of equal specificity that can match the same request.
    """

    def __init__(self, segments: Sequence[Segment] | Segment) -> None:
        segments = [segments] if isinstance(segments, Segment) else list(segments)
        if not segments:
            message = "a policy needs at least one segment: every request would be denied"
            raise ConfigurationError(message, parameter="segments", value=[])

        names: set[str] = set()
        for segment in segments:
            if not isinstance(segment, Segment):
                message = f"policy entry {segment!r} is not a Segment"
                raise ConfigurationError(message, parameter="segments", value=segment)
            if segment.name in names:
                message = f"two segments are named {segment.name!r}: segment names must be unique"
                raise ConfigurationError(message, parameter="segments", value=segment.name)
            names.add(segment.name)

        rules: list[tuple[tuple[int, int, int, int], PathPattern, Segment]] = []
        for segment in segments:
            for pattern in segment.paths:
                rank = (
                    *pattern.specificity,
                    segment.hosts is not None,
                    segment.methods is not None,
                )
                rules.append((rank, pattern, segment))
        rules.sort(key=lambda rule: rule[0], reverse=True)
        _check_overlaps(rules)

        self.segments: tuple[Segment, ...] = tuple(segments)
        self._rules = tuple((pattern, segment) for _, pattern, segment in rules)

    def match(self, path: str, *, method: str = "GET", host: str = "") -> Segment | None:
        """Return the most specific segment for a normalised path, or ``None``."""
        for pattern, segment in self._rules:
            if segment.methods is not None and method not in segment.methods:
                continue
            if segment.hosts is not None and not _host_matches(segment.hosts, host):
                continue
            if pattern.matches(path):
                return segment

        return None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)


def _check_overlaps(rules: list[tuple[tuple[int, int, int, int], PathPattern, Segment]]) -> None:
    seen: dict[tuple[tuple[int, int, int, int], str], list[Segment]] = {}
    for rank, pattern, segment in rules:
        key = (rank, pattern.pattern)
        for other in seen.get(key, []):
            if other is segment:
                continue
            if _may_overlap(other.hosts, segment.hosts) and _may_overlap(
                other.methods, segment.methods
            ):
                message = (
                    f"segments {other.name!r} and {segment.name!r} both claim path "
                    f"{pattern.pattern!r} with equal specificity: narrow one by hosts or methods"
                )
                raise ConfigurationError(message, parameter="segments", value=pattern.pattern)
        seen.setdefault(key, []).append(segment)


def _may_overlap(first: frozenset[str] | None, second: frozenset[str] | None) -> bool:
    if first is None or second is None:
        return True
    if first & second:
        return True
    # Wildcard hosts may overlap each other or a literal host; be conservative.
    return any(value.startswith("*.") for value in first | second)
