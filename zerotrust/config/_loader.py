# SPDX-License-Identifier: Apache-2.0
"""Load a TOML policy file into the same objects the Python API builds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import ssl
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ..exceptions import ConfigurationError
from . import _components as components
from ._components import IMPORT_PATH, Component, import_object, load_factory
from ._options import Parameter, check_value, parameters, takes_extra_options
from ._source import (
    MAX_POLICY_BYTES,
    KeyPath,
    LineIndex,
    PolicyFileError,
    PolicyProblem,
    PolicyWarning,
    as_reference,
    format_key_path,
    read_reference,
    resolve_path,
    suggest,
)
from ._state import hide_password, is_redis_url, url_password, with_password

if TYPE_CHECKING:
    from ..asgi import PathNormalization
    from ..events import EventEmitter, Sink
    from ..monitor import Detector, MonitorSink, RiskSignals
    from ..policy import Policy
    from ..request import ForwardedHeader, TrustedProxies
    from ..state import StateStore
    from ..verifiers import Verifier

__all__ = ["SUPPORTED_VERSIONS", "LoadedPolicy", "load_policy", "middleware_from_policy_file"]

_M = TypeVar("_M")

SUPPORTED_VERSIONS = (1,)
"""The values of the top-level ``version`` key this release understands."""

_TOP_LEVEL_KEYS = (
    "version",
    "middleware",
    "state",
    "verifiers",
    "detectors",
    "monitor",
    "events",
    "segments",
)
_MIDDLEWARE_KEYS = (
    "trusted_proxies",
    "forwarded_header",
    "path_normalization",
    "realm",
    "public_routes",
)
# Descriptions of the injected values, for the error on a key that tries to set one.
_INJECTED = {
    "signals": "the file's risk signals",
    "emitter": "the file's event emitter",
    "state": "the store of the [state] table",
    "shared_state": "the store of the [state] table, when the file has one",
}
# Option names whose string values are credentials, so they must not be written inline.
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:secret|password|passwd|token|dsn|api_key|private_key|credentials?)(?:$|_)"
)
# Request headers that carry credentials in the sinks' HTTP requests.
_SECRET_HEADER = re.compile(r"authorization|cookie|token|secret|api[-_]?key|password", re.I)
_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


@dataclass(frozen=True, slots=True, eq=False)
class LoadedPolicy:
    """
    A policy file turned into objects: the policy, and the middleware settings around it.

    Pass `middleware_options` to `ZeroTrustMiddleware` (or use its ``from_policy_file``) to
    protect an app with it.

    Attributes:
        path: The policy file.
        sha256: The SHA-256 of the file's bytes, as hex.
        policy: The segments.
        trusted_proxies: The reverse proxies whose forwarding header names the client.
        forwarded_header: The header those proxies set.
        path_normalization: ``reject`` or ``rewrite``.
        realm: The realm of ``WWW-Authenticate`` challenges.
        events: The emitter the file's sinks (and any extra sinks) feed.
        verifiers: The verifiers declared under ``[verifiers.NAME]``, by that name.
        signals: The risk signals the monitor raises and risk verifiers read.
        monitor: The sink that runs the detectors, when the file has a ``[monitor]`` table.
        warnings: Settings that are legal but weaken enforcement, with their key paths.
        public_routes: The ``[middleware]`` path rules of routes meant to be public, read by
            ``zerotrust check --app`` and by ``from_policy_file(..., check_routes=True)``.
        state: The store of the ``[state]`` table, or ``None`` when the file has none.
    """

    path: Path
    sha256: str
    policy: Policy
    trusted_proxies: TrustedProxies
    forwarded_header: ForwardedHeader
    path_normalization: PathNormalization
    realm: str
    events: EventEmitter
    verifiers: Mapping[str, Verifier]
    signals: RiskSignals
    monitor: MonitorSink | None
    warnings: tuple[PolicyWarning, ...] = field(default=())
    public_routes: tuple[str, ...] = field(default=())
    state: StateStore | None = field(default=None)

    def middleware_options(self) -> dict[str, Any]:
        """Return the keyword arguments that build the middleware for this policy."""
        return {
            "policy": self.policy,
            "trusted_proxies": self.trusted_proxies,
            "forwarded_header": self.forwarded_header,
            "events": self.events,
            "path_normalization": self.path_normalization,
            "realm": self.realm,
        }


def load_policy(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    extra_sinks: Sequence[Sink] = (),
    build_sinks: bool = True,
) -> LoadedPolicy:
    """
    Load a TOML policy file.

    Every problem in the file is collected before raising, each with its line and key path.
    Relative paths in the file resolve against the file's directory. The warnings of the
    objects built (monitor mode, a long leeway) are emitted again with the key path in front.

    Args:
        path: The policy file.
        environ: Where ``{ env = "NAME" }`` references are looked up; `os.environ` by default.
        extra_sinks: Sinks to add to the file's sinks, such as a `MemorySink` in tests. They
            come before the monitor, so they see the access events first.
        build_sinks: ``False`` checks the ``[[events.sinks]]`` tables without building the
            sinks or creating the spool directory, so nothing is opened or written. The
            emitter then holds only ``extra_sinks`` and the monitor.

    Raises:
        PolicyFileError: listing every problem, if the file cannot be read or is invalid.
    """
    file = Path(path)
    display = str(path)
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_POLICY_BYTES + 1)
    except OSError as error:
        problem = PolicyProblem(display, "(file)", None, f"cannot read: {error.strerror or error}")
        raise PolicyFileError(display, [problem]) from None
    if len(data) > MAX_POLICY_BYTES:
        message = f"the file is larger than {MAX_POLICY_BYTES} bytes"
        raise PolicyFileError(display, [PolicyProblem(display, "(file)", None, message)])

    try:
        text = data.decode("utf-8")
        document = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        position = _TOML_POSITION.search(str(error))
        line = int(position.group(1)) if position else None
        message = f"not valid TOML: {error}"
        raise PolicyFileError(display, [PolicyProblem(display, "(file)", line, message)]) from None

    builder = _Builder(display, file.parent, text, os.environ if environ is None else environ)
    loaded = builder.build(document, list(extra_sinks), build_sinks=build_sinks)
    loaded = _with_identity(loaded, file, hashlib.sha256(data).hexdigest())
    for warning in loaded.warnings:
        warnings.warn(str(warning), warning.category, stacklevel=2)

    return loaded


def _with_identity(loaded: LoadedPolicy, path: Path, sha256: str) -> LoadedPolicy:
    object.__setattr__(loaded, "path", path)
    object.__setattr__(loaded, "sha256", sha256)
    return loaded


class _Invalid(Exception):
    """A value the builder rejects, with the key path it sits at."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(slots=True)
class _Outcome:
    """Whether the block under `_Builder.at` failed."""

    failed: bool = False


class _Reported(Exception):
    """The problem was already recorded; stop building the enclosing object."""


class _Builder:
    """Turns the parsed TOML document into objects, collecting every problem on the way."""

    def __init__(self, display: str, base: Path, text: str, environ: Mapping[str, str]) -> None:
        self.display = display
        self.base = base
        self.lines = LineIndex(text)
        self.environ = environ
        self.problems: list[PolicyProblem] = []
        self.warnings: list[PolicyWarning] = []
        self.verifiers: dict[str, Verifier] = {}
        self.declared_verifiers: set[str] = set()
        self.detectors: dict[str, Detector] = {}
        self.failed_detectors: set[str] = set()
        self.emitter: EventEmitter | None = None
        self.signals: RiskSignals | None = None
        self.state: StateStore | None = None
        # Whether the file has a [state] table that failed to build, with its problem recorded.
        self.state_failed = False
        self.redis_password: str | None = None

    # -- problems and warnings -------------------------------------------------------------

    def problem(self, path: KeyPath, message: str) -> None:
        line = self.lines.line_of(path)
        self.problems.append(PolicyProblem(self.display, format_key_path(path), line, message))

    def fail(self, path: KeyPath, message: str) -> NoReturn:
        raise _Invalid(path, message)

    @contextlib.contextmanager
    def at(self, path: KeyPath, table: Mapping[str, Any] | None = None) -> Iterator[_Outcome]:
        """Record what building the object at ``path`` raises or warns, and carry on."""
        outcome = _Outcome()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield outcome
            except _Reported:
                outcome.failed = True
            except _Invalid as error:
                outcome.failed = True
                self.problem(error.path, error.message)
            except ConfigurationError as error:
                outcome.failed = True
                self.problem(_refine(path, error.parameter, table), str(error))
            except (TypeError, ValueError, KeyError, AttributeError, OSError, ImportError) as error:
                # Constructors check types loosely; a wrong type inside an array lands here.
                outcome.failed = True
                self.problem(path, f"{type(error).__name__}: {error}")
        for caught_warning in caught:
            message = str(caught_warning.message)
            warning_path = _key_named_in(path, message, table)
            self.warnings.append(
                PolicyWarning(
                    self.display,
                    format_key_path(warning_path),
                    self.lines.line_of(warning_path),
                    message,
                    caught_warning.category,
                )
            )

    # -- the document ----------------------------------------------------------------------

    def build(
        self, document: dict[str, Any], extra_sinks: list[Sink], *, build_sinks: bool
    ) -> LoadedPolicy:
        from ..request import TrustedProxies

        self.check_keys(document, (), _TOP_LEVEL_KEYS)
        version = document.get("version", 1)
        if version not in SUPPORTED_VERSIONS:
            supported = ", ".join(str(value) for value in SUPPORTED_VERSIONS)
            self.problem(("version",), f"version {version!r} is not supported; use {supported}")
        self.state = self.build_state(document)

        for name, table in self.table(document, ("detectors",)).items():
            detector = self.typed(
                components.DETECTORS, table, ("detectors", name), base="zerotrust.monitor:Detector"
            )
            if detector is not None:
                self.detectors[name] = detector
            else:
                self.failed_detectors.add(name)

        monitor_table = self.table(document, ("monitor",))
        self.signals = self.build_signals(monitor_table)
        monitor = None
        if "monitor" in document and self.signals is not None:
            monitor = self.component(components.MONITOR, monitor_table, ("monitor",), {"signals"})

        sinks = self.build_sinks(document, build=build_sinks)
        sink_list = [*sinks, *extra_sinks, *([monitor] if monitor is not None else [])]
        self.emitter = self.component(
            components.EMITTER,
            self.table(document, ("events",)),
            ("events",),
            {"sinks"},
            injected={"sinks": sink_list},
            drop=() if build_sinks else ("spool_dir",),
        )
        if monitor is not None and self.emitter is not None:
            monitor.emitter = self.emitter
        health = getattr(self.state, "health", None)
        if health is not None and self.emitter is not None:
            # The store reports state_degraded and state_recovered through the file's sinks.
            health.events = self.emitter

        verifier_tables = self.table(document, ("verifiers",))
        self.declared_verifiers = set(verifier_tables)
        for name, table in verifier_tables.items():
            # The table key names the verifier in events and traces unless the table sets name.
            verifier = self.verifier(table, ("verifiers", name), defaults={"name": name})
            if verifier is not None:
                self.verifiers[name] = verifier

        policy = self.build_policy(document)
        middleware = self.table(document, ("middleware",))
        self.check_keys(middleware, ("middleware",), _MIDDLEWARE_KEYS)
        forwarded_header = self.choice(
            middleware, ("middleware", "forwarded_header"), ("x-forwarded-for", "forwarded")
        )
        path_normalization = self.choice(
            middleware, ("middleware", "path_normalization"), ("reject", "rewrite")
        )
        realm = middleware.get("realm", "zerotrust")
        if not isinstance(realm, str) or not realm:
            self.problem(
                ("middleware", "realm"), f"realm must be a non-empty string, not {realm!r}"
            )
        proxies = None
        networks = middleware.get("trusted_proxies", [])
        path = ("middleware", "trusted_proxies")
        with self.at(path):
            if not isinstance(networks, list):
                self.fail(path, f"trusted_proxies must be an array of strings, not {networks!r}")
            header: ForwardedHeader = (
                "forwarded" if forwarded_header == "forwarded" else "x-forwarded-for"
            )
            proxies = TrustedProxies(networks, header=header)
        public_routes = self.build_public_routes(middleware)

        if self.problems:
            problems = sorted(self.problems, key=lambda problem: problem.line or 0)
            raise PolicyFileError(self.display, problems, self.warnings)
        # No problem was recorded, so every part was built.
        assert policy is not None
        assert proxies is not None
        assert self.emitter is not None
        assert self.signals is not None

        return LoadedPolicy(
            path=Path(self.display),
            sha256="",
            policy=policy,
            trusted_proxies=proxies,
            forwarded_header=header,
            path_normalization="rewrite" if path_normalization == "rewrite" else "reject",
            realm=realm,
            events=self.emitter,
            verifiers=dict(self.verifiers),
            signals=self.signals,
            monitor=monitor,
            warnings=tuple(self.warnings),
            public_routes=public_routes,
            state=self.state,
        )

    def build_state(self, document: dict[str, Any]) -> StateStore | None:
        """Build the store of the ``[state]`` table, which the file's shared state uses."""
        if "state" not in document:
            return None
        path: KeyPath = ("state",)
        if not isinstance(document["state"], dict):
            self.problem(path, f"state must be a table, not {document['state']!r}")
            self.state_failed = True
            return None
        table: dict[str, Any] = document["state"]
        if table.get("type") == "redis" and "password" in table:
            # RedisStateStore takes the password in its URL; convert_redis_url adds it there.
            password_path = (*path, "password")
            with self.at(password_path) as outcome:
                password = table["password"]
                if as_reference(password) is None:
                    self.fail(password_path, _inline_secret("password"))
                self.redis_password = self.text(
                    self.read(password, password_path, secret=True), password_path
                )
                if "url" not in table:
                    self.fail(password_path, "password needs url: add the url of the server")
            table = {key: value for key, value in table.items() if key != "password"}
            if outcome.failed:
                self.state_failed = True
                return None
        state: StateStore | None = self.typed(
            components.STATE_STORES, table, path, base="zerotrust.state:StateStore"
        )
        if state is None:
            self.state_failed = True

        return state

    def build_public_routes(self, middleware: Mapping[str, Any]) -> tuple[str, ...]:
        from ..coverage import _parse_public_routes

        path: KeyPath = ("middleware", "public_routes")
        routes = middleware.get("public_routes", [])
        with self.at(path) as outcome:
            if not isinstance(routes, list):
                self.fail(path, f"public_routes must be an array of path rules, not {routes!r}")
            _parse_public_routes(routes)
        if outcome.failed:
            return ()

        return tuple(routes)

    def build_signals(self, monitor_table: dict[str, Any]) -> RiskSignals | None:
        signals_table = monitor_table.get("signals", {})
        path: KeyPath = ("monitor", "signals")
        if not isinstance(signals_table, dict):
            self.problem(path, f"signals must be a table, not {signals_table!r}")
            return None
        signals: RiskSignals | None = self.component(components.SIGNALS, signals_table, path)
        return signals

    def build_sinks(self, document: dict[str, Any], *, build: bool) -> list[Sink]:
        from ..events import JsonLinesSink

        events = self.table(document, ("events",))
        if "sinks" not in events:
            return [JsonLinesSink("stderr")] if build else []
        sink_tables = events["sinks"]
        if not isinstance(sink_tables, list):
            self.problem(("events", "sinks"), "sinks must be an array of tables ([[events.sinks]])")
            return []

        sinks: list[Sink] = []
        for index, table in enumerate(sink_tables):
            sink = self.typed(
                components.SINKS,
                table,
                ("events", "sinks", index),
                base="zerotrust.events:Sink",
                construct=build,
            )
            if sink is not None:
                sinks.append(sink)

        return sinks

    def build_policy(self, document: dict[str, Any]) -> Policy | None:
        from ..policy import Policy

        segment_tables = document.get("segments")
        if segment_tables is None:
            self.problem(("segments",), "the file has no [[segments]]: add at least one")
            return None
        if not isinstance(segment_tables, list):
            self.problem(("segments",), "segments must be an array of tables ([[segments]])")
            return None

        failed = False
        segments = []
        for index, table in enumerate(segment_tables):
            path = ("segments", index)
            if not isinstance(table, dict):
                self.problem(path, f"each segment must be a table, not {table!r}")
                failed = True
                continue
            segment = self.component(components.SEGMENT, table, path)
            if segment is None:
                # Its problem is recorded already, at the segment or at a verifier it names.
                failed = True
                continue
            segments.append(segment)
        if failed:
            return None

        with self.at(("segments",)):
            return Policy(segments)
        return None

    # -- generic building blocks -----------------------------------------------------------

    def table(self, parent: Mapping[str, Any], path: KeyPath) -> dict[str, Any]:
        value = parent.get(str(path[-1]), {})
        if isinstance(value, dict):
            return value
        self.problem(path, f"{path[-1]} must be a table, not {value!r}")
        return {}

    def check_keys(self, table: Mapping[str, Any], path: KeyPath, allowed: Sequence[str]) -> bool:
        clean = True
        for key in table:
            if key not in allowed:
                clean = False
                self.problem((*path, key), self.unknown_key(key, allowed))
        return clean

    def unknown_key(self, key: str, allowed: Sequence[str]) -> str:
        hint = suggest(key, allowed)
        if hint:
            return f"unknown key {key!r}{hint}"
        listing = ", ".join(sorted(allowed))
        return f"unknown key {key!r}; valid keys here: {listing}"

    def choice(self, table: Mapping[str, Any], path: KeyPath, choices: Sequence[str]) -> str | None:
        value = table.get(str(path[-1]), choices[0])
        if value in choices:
            return str(value)
        allowed = ", ".join(repr(choice) for choice in choices)
        self.problem(
            path, f"{path[-1]} must be one of {allowed}, not {value!r}{_hint(value, choices)}"
        )
        return None

    def arguments(
        self,
        component: Component,
        factory: Any,
        table: Mapping[str, Any],
        path: KeyPath,
        skip: frozenset[str] | set[str] = frozenset(),
        drop: Sequence[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Check and convert the options of ``table`` for ``factory``.

        ``defaults`` are passed for the parameters of ``factory`` that ``table`` does not set.

        Raises:
            _Reported: when any option had a problem (each one is recorded).
        """
        known = dict(parameters(factory))
        if component.options_from is not None:
            for name, option in parameters(import_object(component.options_from)).items():
                known.setdefault(name, option)
        for name in (*component.exclude, *component.injected):
            known.pop(name, None)
        open_ended = takes_extra_options(factory) and component.options_from is None

        failures = len(self.problems)
        failed = False
        arguments: dict[str, Any] = {}
        for key, value in table.items():
            if key in skip:
                continue
            key_path = (*path, key)
            found = known.get(key)
            if key in component.injected:
                description = _INJECTED.get(component.injected[key], "set by the loader")
                self.problem(key_path, f"{key} cannot be set in this table: it is {description}")
                continue
            if found is None and not open_ended:
                self.problem(key_path, self.unknown_key(key, list(known)))
                continue
            parameter = found or Parameter(key, frozenset({"any"}), (), False, False)
            if key in drop:
                continue
            with self.at(key_path) as outcome:
                arguments[key] = self.option(component, parameter, value, key_path)
            failed = failed or outcome.failed
        for name, value in (defaults or {}).items():
            if name in known and name not in table:
                arguments[name] = value
        for name, parameter in known.items():
            if parameter.required and name not in table and name not in skip:
                self.problem(path, f"missing required key {name!r}")
        if failed or len(self.problems) > failures:
            raise _Reported

        return arguments

    def component(
        self,
        component: Component,
        table: Mapping[str, Any],
        path: KeyPath,
        skip: frozenset[str] | set[str] = frozenset(),
        *,
        injected: Mapping[str, Any] | None = None,
        construct: bool = True,
        drop: Sequence[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> Any:
        """Build one object from a table; ``None`` (with the problems recorded) if it fails."""
        with self.at(path, table):
            factory = load_factory(component)
            arguments = self.arguments(component, factory, table, path, skip, drop, defaults)
            for name, what in component.injected.items():
                arguments[name] = self.injected(what, injected, path)
            if construct:
                return factory(**arguments)
        return None

    def injected(self, what: str, given: Mapping[str, Any] | None, path: KeyPath) -> Any:
        if given is not None and what in given:
            return given[what]
        if what == "signals":
            return self.signals
        if what == "emitter":
            return self.emitter
        if what == "shared_state":
            return self.state
        if what == "state":
            return self.required_state(path)
        return None

    def required_state(self, path: KeyPath) -> StateStore:
        """Return the ``[state]`` store for a part that keeps its state there."""
        if self.state is not None:
            return self.state
        if self.state_failed:
            raise _Reported
        self.fail(
            path,
            "this setting keeps its state in the store of the [state] table, but the file has "
            'no [state] table: add one, with type = "redis", url and namespace to share the '
            'state between processes, or type = "memory" for one process',
        )

    def typed(
        self,
        registry: Mapping[str, Component],
        value: object,
        path: KeyPath,
        *,
        base: str,
        construct: bool = True,
        defaults: Mapping[str, Any] | None = None,
    ) -> Any:
        """Build an object whose table names its ``type``: a registered name or an import path."""
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict):
            self.problem(path, f"expected a table with a 'type' key, not {value!r}")
            return None
        kind = value.get("type")
        if not isinstance(kind, str):
            names = ", ".join(sorted(registry))
            message = f"missing 'type': use one of {names}, or a 'package.module:Class' import path"
            self.problem(path, message)
            return None

        component = registry.get(kind)
        if component is None and IMPORT_PATH.fullmatch(kind):
            component = Component(kind)
        if component is None:
            names = ", ".join(sorted(registry))
            hint = suggest(kind, registry)
            choices = f"{names}, or a 'package.module:Class' import path"
            if hint:
                message = f"unknown type {kind!r}{hint} Valid types are {choices}"
            else:
                message = f"unknown type {kind!r}: use one of {choices}"
            self.problem((*path, "type"), message)
            return None

        failures = len(self.problems)
        with self.at((*path, "type")):
            factory = load_factory(component)
            expected = import_object(base)
            if not (isinstance(factory, type) and issubclass(factory, expected)):
                message = f"{kind!r} is not a subclass of {base.replace(':', '.')}"
                self.fail((*path, "type"), message)
        if len(self.problems) > failures:
            return None

        return self.component(
            component, value, path, {"type"}, construct=construct, defaults=defaults
        )

    def option(
        self, component: Component, parameter: Parameter, value: object, path: KeyPath
    ) -> Any:
        """Convert one option value: references, secrets, type checks, paths and tuples."""
        name = parameter.name
        converter = component.converters.get(name)
        if converter is not None:
            return getattr(self, f"convert_{converter}")(value, path)

        reference = as_reference(value)
        secret = name in component.secrets or bool(_SECRET_NAME.search(name))
        if reference is not None:
            value = self.read(value, path, secret=secret)
            value = _from_text(value, parameter)
        elif name in component.secrets or (isinstance(value, str) and _SECRET_NAME.search(name)):
            self.fail(path, _inline_secret(name))

        if isinstance(value, bytes) and "any" not in parameter.kinds:
            self.fail(path, f"{name} must be UTF-8 text; the referenced file is binary")
        if not isinstance(value, bytes):
            error = check_value(parameter, value)
            if error is not None:
                self.fail(path, f"{name} {error}{_hint(value, parameter.choices)}")
        if name in component.paths and isinstance(value, str):
            value = str(resolve_path(value, self.base))
        if parameter.wants_tuple and isinstance(value, list):
            value = tuple(value)

        return value

    def read(self, value: object, path: KeyPath, *, secret: bool = False) -> str | bytes:
        reference = as_reference(value)
        assert reference is not None
        if secret and reference.default is not None:
            self.fail(
                path,
                "a secret cannot have a default written in the policy file: remove default, "
                "and set the variable or point the value at a file with { file = ... }",
            )
        try:
            return read_reference(reference, base=self.base, environ=self.environ)
        except ConfigurationError as error:
            self.fail(path, str(error))

    def verifier(
        self, value: object, path: KeyPath, defaults: Mapping[str, Any] | None = None
    ) -> Verifier | None:
        verifier: Verifier | None = self.typed(
            components.VERIFIERS,
            value,
            path,
            base="zerotrust.verifiers:Verifier",
            defaults=defaults,
        )
        return verifier

    # -- converters, named in _components ---------------------------------------------------

    def convert_public_keys(self, value: object, path: KeyPath) -> Any:
        reference = as_reference(value)
        if reference is None:
            _check_inline_keys(value, path)
            return value
        if isinstance(reference.default, str):
            # A default is written in the file, so like inline keys it may hold public keys only.
            # The referenced value itself may be an HMAC secret.
            _check_inline_keys(self.parse_keys(reference.default, path), path)
        return self.parse_keys(self.read(value, path), path)

    def parse_keys(self, keys: str | bytes, path: KeyPath) -> Any:
        """Parse referenced key text that starts with ``{`` as JSON; return other text as is."""
        if isinstance(keys, str) and keys.lstrip().startswith("{"):
            try:
                return json.loads(keys)
            except json.JSONDecodeError as error:
                self.fail(path, f"the referenced keys are not valid JSON: {error}")
        return keys

    def convert_jwks_options(self, value: object, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            self.fail(path, f"jwks_options must be a table, not {value!r}")
        component = components.REMOTE_KEY_SET
        return self.arguments(component, load_factory(component), value, path)

    def convert_device_registry(self, value: object, path: KeyPath) -> Any:
        return self.required(
            self.typed(
                components.DEVICE_REGISTRIES, value, path, base="zerotrust.devices:DeviceRegistry"
            )
        )

    def convert_geo_backend(self, value: object, path: KeyPath) -> Any:
        return self.required(
            self.typed(components.BACKENDS, value, path, base="zerotrust.geo:GeoBackend")
        )

    def convert_grant_store(self, value: object, path: KeyPath) -> Any:
        return self.required(
            self.typed(components.GRANT_STORES, value, path, base="zerotrust.grants:GrantStore")
        )

    def convert_single_use(self, value: object, path: KeyPath) -> Any:
        if not isinstance(value, bool):
            self.fail(
                path,
                "single_use must be true (each grant token is good for one request, claimed in "
                f"the store of the [state] table) or false, not {value!r}",
            )
        return self.required_state(path) if value else None

    def convert_redis_url(self, value: object, path: KeyPath) -> Any:
        reference = as_reference(value)
        if reference is None:
            if not isinstance(value, str):
                self.fail(path, f"url must be a string or a reference, not {value!r}")
            if url_password(value) is not None:
                self.fail(
                    path,
                    "url contains a password, which must not be written in the policy file: "
                    'write url = { env = "REDIS_URL" } or { file = "..." }, or keep the password '
                    'out of the url and set password = { env = "REDIS_PASSWORD" }',
                )
            url = value
        else:
            if isinstance(reference.default, str) and url_password(reference.default) is not None:
                self.fail(
                    path, "the default of url contains a password: remove it from the default"
                )
            url = self.text(self.read(value, path), path)
        # Messages show the URL with its password hidden, since it may come from a secret.
        displayed_url = hide_password(url)
        if not is_redis_url(url):
            message = f"url must be a redis://, rediss:// or unix:// URL, not {displayed_url!r}"
            self.fail(path, message)
        # RedisStateStore compares the scheme as written, and its message would show the URL.
        scheme, separator, rest = url.partition("://")
        url = scheme.lower() + separator + rest
        if self.redis_password is not None:
            if url_password(url) is not None:
                self.fail(path, "the url has a password and password is set too: give it once")
            url = with_password(url, self.redis_password)

        return url

    def convert_segment_scopes(self, value: object, path: KeyPath) -> Any:
        example = '["orders:read"] or { GET = ["orders:read"], POST = ["orders:write"] }'
        if isinstance(value, list):
            return value
        if not isinstance(value, dict):
            self.fail(
                path,
                "scopes must be an array of scope names or a table of HTTP methods and arrays, "
                f"such as {example}, not {value!r}",
            )
        for method, scopes in value.items():
            if isinstance(scopes, list):
                continue
            message = f"scopes.{method} must be an array of scope names, not {scopes!r}"
            if isinstance(scopes, str) and len(scopes.split()) > 1:
                # A space-separated string would be one scope with spaces, which no token holds.
                message += f": write {json.dumps(scopes.split())}"
            elif isinstance(scopes, str):
                message += f": write {json.dumps([scopes])}"
            self.fail((*path, method), message)

        return value

    def convert_grant_events(self, value: object, path: KeyPath) -> Any:
        if not isinstance(value, bool):
            self.fail(
                path,
                "events must be true (record grant events with the policy's sinks) or false, "
                f"not {value!r}",
            )
        return self.emitter if value else None

    def convert_time_windows(self, value: object, path: KeyPath) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            return self.required(self.component(components.TIME_WINDOW, value, path))
        if not isinstance(value, list):
            self.fail(path, f"windows must be a string, a table or an array of them, not {value!r}")
        windows = []
        for index, item in enumerate(value):
            if isinstance(item, dict):
                item = self.component(components.TIME_WINDOW, item, (*path, index))
            windows.append(item)
        return [self.required(window) for window in windows]

    def convert_event_format(self, value: object, path: KeyPath) -> Any:
        if isinstance(value, str) and value in components.FORMATS:
            return import_object(components.FORMATS[value])
        if isinstance(value, str) and IMPORT_PATH.fullmatch(value):
            return import_object(value)
        if isinstance(value, dict):
            kind = value.get("type")
            if kind == "cef":
                return self.required(self.component(components.CEF_FORMAT, value, path, {"type"}))
            if isinstance(kind, str) and IMPORT_PATH.fullmatch(kind):
                return self.required(self.component(Component(kind), value, path, {"type"}))
        names = ", ".join(repr(name) for name in components.FORMATS)
        self.fail(
            path,
            f'format must be one of {names}, a {{ type = "cef", ... }} table or a '
            f"'package.module:name' import path, not {value!r}{_hint(value, components.FORMATS)}",
        )

    def convert_sink_target(self, value: object, path: KeyPath) -> Any:
        if value in ("stderr", "stdout"):
            return value
        if not isinstance(value, str) or not value:
            self.fail(path, f"target must be 'stderr', 'stdout' or a file path, not {value!r}")
        return str(resolve_path(value, self.base))

    def convert_ssl_context(self, value: object, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            self.fail(path, 'ssl_context must be a table such as { ca_file = "ca.pem" }')
        self.check_keys(value, path, ("ca_file", "cert_file", "key_file"))
        files = {}
        for key in ("ca_file", "cert_file", "key_file"):
            if key in value:
                if not isinstance(value[key], str):
                    self.fail((*path, key), f"{key} must be a file path, not {value[key]!r}")
                files[key] = str(resolve_path(value[key], self.base))
        if "key_file" in files and "cert_file" not in files:
            self.fail((*path, "key_file"), "key_file needs cert_file")
        context = ssl.create_default_context(cafile=files.get("ca_file"))
        if "cert_file" in files:
            context.load_cert_chain(files["cert_file"], files.get("key_file"))
        return context

    def convert_http_headers(self, value: object, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            self.fail(path, f"headers must be a table of header names and values, not {value!r}")
        headers = {}
        for name, header_value in value.items():
            header_path = (*path, name)
            if as_reference(header_value) is not None:
                secret = bool(_SECRET_HEADER.search(name))
                header_value = self.read(header_value, header_path, secret=secret)
            elif _SECRET_HEADER.search(name):
                self.fail(header_path, _inline_secret(f"header {name}"))
            if not isinstance(header_value, str):
                self.fail(header_path, f"header {name!r} must be a string, not {header_value!r}")
            headers[name] = header_value
        return headers

    def convert_elasticsearch_api_key(self, value: object, path: KeyPath) -> Any:
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            key = value[1]
            if as_reference(key) is None:
                self.fail((*path, 1), _inline_secret("api_key"))
            return (value[0], self.text(self.read(key, (*path, 1), secret=True), (*path, 1)))
        if as_reference(value) is None:
            self.fail(path, _inline_secret("api_key"))
        return self.text(self.read(value, path, secret=True), path)

    def convert_basic_auth(self, value: object, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            self.fail(path, 'basic_auth must be { username = "...", password = { env = "..." } }')
        self.check_keys(value, path, ("username", "password"))
        username = value.get("username")
        if not isinstance(username, str) or not username:
            self.fail((*path, "username"), f"username must be a non-empty string, not {username!r}")
        password = value.get("password")
        if as_reference(password) is None:
            self.fail((*path, "password"), _inline_secret("password"))
        password_path = (*path, "password")
        return (username, self.text(self.read(password, password_path, secret=True), password_path))

    def convert_detectors(self, value: object, path: KeyPath) -> Any:
        from ..monitor import default_detectors

        if value == "default":
            return default_detectors()
        if not isinstance(value, list):
            self.fail(
                path, f'detectors must be "default" or an array of names and tables, not {value!r}'
            )
        detectors = []
        for index, item in enumerate(value):
            item_path = (*path, index)
            if isinstance(item, str) and (item in self.detectors or item in self.failed_detectors):
                detectors.append(self.required(self.detectors.get(item)))
                continue
            if (
                isinstance(item, str)
                and item not in components.DETECTORS
                and not IMPORT_PATH.fullmatch(item)
            ):
                names = [*self.detectors, *components.DETECTORS]
                message = (
                    f"no detector named {item!r} under [detectors], and no detector type "
                    f"of that name{suggest(item, names)}"
                )
                self.fail(item_path, message)
            detector = self.typed(
                components.DETECTORS, item, item_path, base="zerotrust.monitor:Detector"
            )
            detectors.append(self.required(detector))
        return detectors

    def convert_segment_verifiers(self, value: object, path: KeyPath) -> Any:
        if not isinstance(value, list):
            self.fail(path, f"verifiers must be an array of names and tables, not {value!r}")
        verifiers = []
        for index, item in enumerate(value):
            item_path = (*path, index)
            if isinstance(item, str):
                verifier = self.verifiers.get(item)
                if verifier is None and item in self.declared_verifiers:
                    raise _Reported
                if verifier is None:
                    names = self.declared_verifiers
                    self.fail(
                        item_path,
                        f"no verifier named {item!r} under [verifiers]{suggest(item, names)}",
                    )
            else:
                verifier = self.verifier(item, item_path)
            verifiers.append(self.required(verifier))
        return verifiers

    # -- small helpers ---------------------------------------------------------------------

    def required(self, value: Any) -> Any:
        """Stop building the enclosing object when a part of it failed (already recorded)."""
        if value is None:
            raise _Reported
        return value

    def text(self, value: str | bytes, path: KeyPath) -> str:
        if isinstance(value, bytes):
            self.fail(path, "the referenced value must be UTF-8 text")
        return value


def _refine(path: KeyPath, parameter: str | None, table: Mapping[str, Any] | None) -> KeyPath:
    """Add the constructor's parameter name to ``path`` when it names a key of ``table``."""
    if not parameter or table is None:
        return path
    name = parameter.rsplit(".", 1)[-1].split("[", 1)[0]
    return (*path, name) if name in table else path


def _key_named_in(path: KeyPath, message: str, table: Mapping[str, Any] | None) -> KeyPath:
    """
    Return the path of the one key of ``table`` that ``message`` names as a word, or ``path``.

    Constructors warn about a setting in words (``monitor mode``, ``leeway of 120 s``), so
    the warning is placed at the line of that setting rather than at its table's header.
    """
    if not table:
        return path
    named = [key for key in table if re.search(rf"\b{re.escape(key)}\b", message)]

    return (*path, named[0]) if len(named) == 1 else path


def _hint(value: object, choices: Sequence[str] | Mapping[str, Any]) -> str:
    if not isinstance(value, str) or not choices:
        return ""
    return suggest(value, choices)


def _inline_secret(name: str) -> str:
    return (
        f"{name} is a secret and must not be written in the policy file: use "
        '{ env = "VARIABLE" } or { file = "path/to/file" }'
    )


def _from_text(value: str | bytes, parameter: Parameter) -> object:
    """Read a number or a boolean from the text of an environment variable or file."""
    if not isinstance(value, str) or "str" in parameter.kinds or "any" in parameter.kinds:
        return value
    text = value.strip()
    if "bool" in parameter.kinds and text in ("true", "false"):
        return text == "true"
    with contextlib.suppress(ValueError):
        if "int" in parameter.kinds:
            return int(text)
    with contextlib.suppress(ValueError):
        if "float" in parameter.kinds:
            return float(text)
    return value


def _check_inline_keys(value: object, path: KeyPath) -> None:
    """Reject HMAC secrets and private keys written into the file; public keys may be inline."""
    if isinstance(value, dict) and "keys" in value and isinstance(value["keys"], list):
        value = value["keys"]
    items = value if isinstance(value, list) else [value]
    for index, item in enumerate(items):
        item_path = (*path, index) if isinstance(value, list) else path
        if isinstance(item, str):
            if "-----BEGIN" in item and "PRIVATE" not in item:
                continue
            raise _Invalid(item_path, _inline_secret("an HMAC secret or private key in keys"))
        if isinstance(item, dict):
            if "d" in item or item.get("kty") == "oct" or "k" in item:
                raise _Invalid(item_path, _inline_secret("a private or secret JWK in keys"))
            continue
        raise _Invalid(item_path, f"keys must be public JWKs, a JWKS or PEM text, not {item!r}")


def middleware_from_policy_file(
    middleware_class: Callable[..., _M], app: Any, path: str | os.PathLike[str], **overrides: Any
) -> _M:
    """
    Build ``middleware_class`` around ``app`` from a policy file; ``overrides`` win.

    ``overrides`` replace the file's middleware settings, for example ``events=`` for a test's
    own sinks or ``on_deny=``, which a file cannot express. Verifiers and the monitor keep
    the file's emitter. With ``check_routes=True``, the file's ``public_routes`` apply unless
    ``overrides`` set their own.
    """
    loaded = load_policy(path)
    options = loaded.middleware_options()
    # The whole loaded policy, so the middleware can read the same file again on reload().
    options["policy"] = loaded
    if overrides.get("check_routes") and loaded.public_routes:
        options["public_routes"] = loaded.public_routes
    options.update(overrides)

    return middleware_class(app, **options)
