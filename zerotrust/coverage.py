# SPDX-License-Identifier: Apache-2.0
"""List the routes of an application and the policy segment each route falls in."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from .exceptions import ConfigurationError
from .policy import PathPattern, Policy, Segment

__all__ = [
    "CoverageReport",
    "RouteCheck",
    "RouteCoverage",
    "RouteStatus",
    "check_routes",
    "load_app",
]

RouteStatus = Literal["protected", "public", "uncovered", "undeclared_public", "monitor"]

# Methods checked for a route that accepts any method, such as a Django function view or a
# mounted ASGI app. HEAD follows GET and the framework handles OPTIONS, so both are left out.
_ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE")
_WEBSOCKET = "WEBSOCKET"
_SUPPORTED = "Starlette, FastAPI, Litestar, Django, Flask, Quart and Falcon"
_MAX_WRAPPERS = 64

# Representative values for path parameters of a known type. Any other parameter gets its own
# name, or the first value of _SAMPLE_VALUES that its converter's regular expression accepts.
_TYPED_SAMPLES = {
    "int": "1",
    "float": "1.5",
    "decimal": "1.5",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "date": "2024-01-01",
    "datetime": "2024-01-01T00:00:00",
    "dt": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "timedelta": "1",
}
_SAMPLE_VALUES = ("x", "1", "1.5", "00000000-0000-0000-0000-000000000000", "2024-01-01")

# {name} and {name:type} in Starlette, FastAPI, Litestar and Falcon paths.
_BRACE_PARAMETER = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")
# <name>, <type:name> and <type(arguments):name> in Werkzeug (Flask, Quart) rules.
_ANGLE_PARAMETER = re.compile(r"<(?:([A-Za-z_]\w*)(?:\(([^)]*)\))?:)?([A-Za-z_]\w*)>")
# <name> and <converter:name> in Django path() routes.
_DJANGO_PARAMETER = re.compile(r"<(?:([^>:]+):)?([^>]+)>")

_STATUS_ORDER: dict[RouteStatus, int] = {
    "uncovered": 0,
    "undeclared_public": 1,
    "monitor": 2,
    "public": 3,
    "protected": 4,
}


@dataclass(frozen=True, slots=True)
class RouteCoverage:
    """
    One route of the application and the segment its requests fall in.

    A route whose methods fall in different segments gets one row per segment.

    Attributes:
        methods: The HTTP methods of this row, or ``("WEBSOCKET",)`` for a websocket route,
            which the policy matches as ``GET``.
        path: The route's path as the framework declares it, mount prefixes included.
        endpoint: The framework's name for the route (the route or URL name, the Flask
            endpoint), or the qualified name of the view.
        segment: The name of the segment that `Policy.match` returns, or ``None``.
        status: ``protected``, ``monitor`` (in a segment that only records denials),
            ``public`` (in a public segment and declared public), ``undeclared_public`` or
            ``uncovered`` (in no segment: every request is denied).
        sample_path: The concrete path matched against the policy, with each path parameter
            replaced by a representative value.
        host: The host matched against segments that name hosts; empty for any host.

    .. versionadded:: 0.1.0
    """

    methods: tuple[str, ...]
    path: str
    endpoint: str
    segment: str | None
    status: RouteStatus
    sample_path: str
    host: str = ""

    @property
    def failed(self) -> bool:
        """Whether this row makes the check fail."""
        return self.status in ("uncovered", "undeclared_public")

    def describe(self) -> str:
        """Describe in one line what is wrong with the row, or how it is covered."""
        where = f"{' '.join(self.methods)} {self.path} ({self.endpoint})"
        if self.status == "uncovered":
            return f"{where}: no segment matches {self.sample_path}, so every request is denied"
        if self.status == "undeclared_public":
            return (
                f"{where}: falls in public segment {self.segment!r} "
                "but is not listed in public_routes"
            )
        return f"{where}: {self.status} by segment {self.segment!r}"


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """
    The routes of an application with the segment and status of each.

    Attributes:
        framework: The framework whose routes were listed, such as ``starlette``.
        rows: One row per route and segment, in the framework's route order.
        problems: One line per failing row: a route in no segment, or in a public segment
            without being listed in ``public_routes``.
        unused_public_routes: Rules of ``public_routes`` that match no route of the app.

    .. versionadded:: 0.1.0
    """

    framework: str
    rows: tuple[RouteCoverage, ...]
    problems: tuple[str, ...]
    unused_public_routes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every route falls in a segment, and every public route was declared."""
        return not self.problems

    def format(self) -> str:
        """Return the rows as a plain-text table, failing rows first."""
        header = ("status", "methods", "path", "segment", "endpoint")
        rows = sorted(self.rows, key=lambda row: _STATUS_ORDER[row.status])
        lines = [
            (row.status, ",".join(row.methods), row.path, row.segment or "-", row.endpoint)
            for row in rows
        ]
        widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=False)]
        rendered = [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in (header, *lines)
        ]

        return "\n".join(rendered)


class _Route(NamedTuple):
    """A route as a framework lists it, before the policy is applied."""

    path: str
    sample_path: str
    methods: tuple[str, ...]
    endpoint: str
    host: str = ""


def check_routes(
    app: Any,
    policy: Policy | Iterable[Segment] | None = None,
    *,
    public_routes: Iterable[str] = (),
    host: str = "",
) -> CoverageReport:
    """
    List every route of an application with the segment its requests fall in.

    Starlette and FastAPI (mounts, hosts and routers included), Litestar, Django (the URL
    resolver of ``ROOT_URLCONF``, includes included), Flask, Quart and Falcon apps are
    supported. ``app`` may be wrapped in `ZeroTrustMiddleware`, in a WSGI middleware with
    ``.app`` and ``.policy`` attributes, or in other middleware that keeps the wrapped app in
    ``.app``.

    Each path parameter is replaced by a representative value (``1`` for an integer, its name
    for a string) and the result is matched with `Policy.match` for every method the route
    accepts. Automatic ``HEAD`` and ``OPTIONS`` responders are left out.

    .. note::
       The sample path is an approximation: a glob rule that accepts some values of a
       parameter and not others is judged on the sample value only.

    Args:
        app: The application, as the ASGI or WSGI server receives it.
        policy: The policy to check; by default the policy of the `ZeroTrustMiddleware`
            (or ``ZeroTrustWSGIMiddleware``) found around or inside ``app``.
        public_routes: Path rules, written like a segment's ``paths`` (exact ``/healthz``,
            prefix ``/docs/``, glob ``/files/*``), for the routes meant to be public. A rule
            matches a route's declared path (``/files/{name}``) or its sample path. A route in
            a public segment that no rule matches is a problem.
        host: The ``Host`` the app is served under, for segments that name hosts.

    Returns:
        The report; ``report.ok`` is false when a route falls in no segment or in an
        undeclared public segment.

    Raises:
        ConfigurationError: when the framework is not supported, no policy is given or found,
            or ``public_routes`` is a single string.

    .. versionadded:: 0.1.0
    """
    declared = _parse_public_routes(public_routes)
    framework, target, found_policy = _unwrap(app)
    if policy is None:
        policy = found_policy
    if policy is None:
        message = (
            f"no policy was given and no ZeroTrustMiddleware was found around {app!r}: "
            "pass the policy to check as policy="
        )
        raise ConfigurationError(message, parameter="policy", value=None)
    if not isinstance(policy, Policy):
        policy = Policy(list(policy))

    rows: list[RouteCoverage] = []
    used: set[str] = set()
    for route in _LISTERS[framework](target):
        matching = {
            rule
            for rule, pattern in declared.items()
            if pattern.matches(route.path) or pattern.matches(route.sample_path)
        }
        used |= matching
        rows.extend(_judge(route, policy, bool(matching), route.host or host))

    problems = tuple(row.describe() for row in rows if row.failed)
    unused = tuple(rule for rule in declared if rule not in used)

    return CoverageReport(framework, tuple(rows), problems, unused)


def load_app(reference: str, *, app_dir: str | Path | None = None) -> Any:
    """
    Import an application from a ``module:attribute`` reference, as uvicorn and gunicorn do.

    The directory ``app_dir`` (the current directory by default) is put first on
    ``sys.path``, so ``myproject.asgi:application`` is found from the project root.

    Raises:
        ConfigurationError: when the reference is malformed, the module does not exist, or the
            attribute is missing. An exception raised while the module runs is not caught.

    .. versionadded:: 0.1.0
    """
    module_name, separator, attribute = reference.partition(":")
    if not separator or not module_name or not attribute:
        message = f"app reference {reference!r} must look like module:attribute, such as main:app"
        raise ConfigurationError(message, parameter="app", value=reference)

    directory = str(Path(app_dir if app_dir is not None else os.getcwd()).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not (
            module_name == error.name or module_name.startswith(error.name + ".")
        ):
            raise
        message = (
            f"module {module_name!r} in app reference {reference!r} was not found "
            f"from {directory}: run from the project root or pass its directory"
        )
        raise ConfigurationError(message, parameter="app", value=reference) from None

    for name in attribute.split("."):
        if not hasattr(target, name):
            message = f"module {module_name!r} has no attribute {attribute!r}"
            raise ConfigurationError(message, parameter="app", value=reference)
        target = getattr(target, name)

    return target


class RouteCheck:
    """
    The route check that `ZeroTrustMiddleware` runs at lifespan startup with ``check_routes=True``.

    Args:
        app: The application the middleware wraps; its framework must be one whose routes
            can be listed and that runs the ASGI lifespan protocol.
        public_routes: Route paths meant to be public, as for `check_routes`.

    Raises:
        ConfigurationError: when ``public_routes`` is invalid, the framework is not supported,
            or the framework never sends lifespan events (Django), so the check would never run.

    .. versionadded:: 0.1.0
    """

    def __init__(self, app: Any, public_routes: Iterable[str] = ()) -> None:
        self.public_routes = tuple(_parse_public_routes(public_routes))
        framework = _unwrap(app)[0]
        if framework == "django":
            message = (
                "check_routes=True cannot run on Django: its ASGI handler does not support "
                "the lifespan protocol, so there is no startup to check at. "
                "Call zerotrust.coverage.check_routes() in a test or run 'zerotrust check' instead"
            )
            raise ConfigurationError(message, parameter="check_routes", value=True)

    def run(self, app: Any, policy: Policy) -> CoverageReport:
        """
        Check the routes of ``app`` against ``policy``.

        Raises:
            ConfigurationError: listing every failing route, when the check fails.
        """
        report = check_routes(app, policy, public_routes=self.public_routes)
        if not report.ok:
            listing = "\n".join(f"  {problem}" for problem in report.problems)
            message = (
                f"route check failed for {len(report.problems)} route(s):\n{listing}\n"
                "Add a segment for each route, or list intended public routes in public_routes"
            )
            raise ConfigurationError(message, parameter="check_routes", value=report.problems)

        return report


def _parse_public_routes(public_routes: Iterable[str]) -> dict[str, PathPattern]:
    if isinstance(public_routes, str):
        message = (
            f"public_routes must be a list of paths, not the string {public_routes!r}: "
            f"write [{public_routes!r}]"
        )
        raise ConfigurationError(message, parameter="public_routes", value=public_routes)

    declared: dict[str, PathPattern] = {}
    for rule in public_routes:
        if not isinstance(rule, str):
            message = f"public_routes entry {rule!r} must be a path rule such as '/healthz'"
            raise ConfigurationError(message, parameter="public_routes", value=rule)
        declared[rule] = PathPattern(rule)

    return declared


def _judge(route: _Route, policy: Policy, declared_public: bool, host: str) -> list[RouteCoverage]:
    """Match every method of a route, and group the methods that fall in the same segment."""
    groups: dict[tuple[str | None, RouteStatus], list[str]] = {}
    for method in route.methods:
        segment = policy.match(
            route.sample_path, method="GET" if method == _WEBSOCKET else method, host=host
        )
        status = _status(segment, declared_public)
        groups.setdefault((segment.name if segment else None, status), []).append(method)

    return [
        RouteCoverage(
            tuple(methods), route.path, route.endpoint, name, status, route.sample_path, host
        )
        for (name, status), methods in groups.items()
    ]


def _status(segment: Segment | None, declared_public: bool) -> RouteStatus:
    if segment is None:
        return "uncovered"
    if segment.public:
        return "public" if declared_public else "undeclared_public"
    if segment.mode == "monitor":
        return "monitor"

    return "protected"


# Finding the application and its policy


def _unwrap(app: Any) -> tuple[str, Any, Policy | None]:
    """Follow wrappers down to a supported application, collecting the outermost policy."""
    policy: Policy | None = None
    current = app
    for _ in range(_MAX_WRAPPERS):
        framework = _framework_of(current)
        if framework is not None:
            if policy is None:
                policy = _declared_policy(framework, current)
            return framework, current, policy

        wrapper_policy = _policy_of(current)
        if policy is None and wrapper_policy is not None:
            policy = wrapper_policy
        if inspect.ismethod(current):
            # Quart's app.asgi_app and Flask's app.wsgi_app are bound methods of the app.
            current = current.__self__
        elif hasattr(current, "app"):
            current = current.app
        else:
            break

    message = (
        f"cannot list the routes of {type(current).__module__}.{type(current).__qualname__}: "
        f"route checks support {_SUPPORTED} applications"
    )
    raise ConfigurationError(message, parameter="app", value=app)


def _framework_of(candidate: Any) -> str | None:
    """Name the framework of ``candidate``, importing only frameworks that are loaded."""
    loaded = sys.modules
    if "starlette" in loaded:
        from starlette.applications import Starlette
        from starlette.routing import Router

        if isinstance(candidate, Starlette | Router):
            return "starlette"
    if "litestar" in loaded:
        from litestar import Litestar

        if isinstance(candidate, Litestar):
            return "litestar"
    if "django" in loaded:
        from django.core.handlers.base import BaseHandler

        if isinstance(candidate, BaseHandler):
            return "django"
    if "quart" in loaded:
        from quart import Quart

        if isinstance(candidate, Quart):
            return "quart"
    if "flask" in loaded:
        from flask import Flask

        if isinstance(candidate, Flask):
            return "flask"
    if "falcon" in loaded:
        import falcon

        if isinstance(candidate, falcon.App):
            return "falcon"

    return None


def _policy_of(wrapper: Any) -> Policy | None:
    """Return the policy of a zerotrust middleware, ASGI or WSGI."""
    from .asgi import ZeroTrustMiddleware

    if isinstance(wrapper, ZeroTrustMiddleware):
        return wrapper.policy
    policy = getattr(wrapper, "policy", None)
    if type(wrapper).__name__ == "ZeroTrustWSGIMiddleware" and isinstance(policy, Policy):
        return policy

    return None


def _declared_policy(framework: str, app: Any) -> Policy | None:
    """Find a policy passed to the framework's own middleware list, or wrapped inside it."""
    if framework == "starlette":
        for middleware in getattr(app, "user_middleware", ()):
            if _is_zerotrust(middleware.cls):
                return _as_policy(middleware.kwargs.get("policy"))
    elif framework == "litestar":
        for middleware in app.middleware:
            if _is_zerotrust(getattr(middleware, "middleware", None)):
                return _as_policy(middleware.kwargs.get("policy"))
    elif framework in ("flask", "quart"):
        inner = app.wsgi_app if framework == "flask" else app.asgi_app
        for _ in range(_MAX_WRAPPERS):
            if inspect.ismethod(inner):
                break
            policy = _policy_of(inner)
            if policy is not None:
                return policy
            inner = getattr(inner, "app", None)

    return None


def _is_zerotrust(middleware_class: Any) -> bool:
    from .asgi import ZeroTrustMiddleware

    return isinstance(middleware_class, type) and issubclass(middleware_class, ZeroTrustMiddleware)


def _as_policy(policy: Any) -> Policy | None:
    if policy is None or isinstance(policy, Policy):
        return policy
    return Policy(policy)


# Sample paths


def _sample_value(name: str, kind: str, regex: str | None = None) -> str:
    """Return a representative value for a path parameter of the given type or pattern."""
    if kind in _TYPED_SAMPLES:
        return _TYPED_SAMPLES[kind]
    if regex is not None:
        for candidate in (name, *_SAMPLE_VALUES):
            if re.fullmatch(regex, candidate):
                return candidate

    return name


def _fill_braces(path: str, regexes: Mapping[str, str] | None = None) -> str:
    """Replace ``{name}`` and ``{name:type}`` parameters with representative values."""

    def replace(match: re.Match[str]) -> str:
        name, kind = match.group(1), (match.group(2) or "").split("(", 1)[0]
        regex = regexes.get(kind) if regexes is not None else None
        return _sample_value(name, kind, regex)

    return _BRACE_PARAMETER.sub(replace, path)


def _without_automatic(methods: Iterable[str], automatic_options: bool = True) -> tuple[str, ...]:
    """Drop HEAD where GET exists (every framework here serves it from GET) and OPTIONS."""
    present = {method.upper() for method in methods}
    if "GET" in present:
        present.discard("HEAD")
    if automatic_options:
        present.discard("OPTIONS")

    return tuple(sorted(present))


# Route listers, one per framework


def _starlette_routes(app: Any) -> Iterator[_Route]:
    from starlette.convertors import CONVERTOR_TYPES

    regexes = {name: convertor.regex for name, convertor in CONVERTOR_TYPES.items()}
    yield from _walk_starlette(app.routes, "", "", regexes)


def _walk_starlette(
    routes: Iterable[Any], prefix: str, host: str, regexes: Mapping[str, str]
) -> Iterator[_Route]:
    from starlette.routing import Host, Mount, Route, WebSocketRoute

    for route in routes:
        if isinstance(route, Route):
            path = prefix + route.path
            methods = _without_automatic(route.methods) if route.methods else _ANY_METHOD
            yield _Route(path, _fill_braces(path, regexes), methods, route.name, host)
        elif isinstance(route, WebSocketRoute):
            path = prefix + route.path
            yield _Route(path, _fill_braces(path, regexes), (_WEBSOCKET,), route.name, host)
        elif isinstance(route, Mount):
            inner = _inner_routes(route.app)
            if inner is not None:
                yield from _walk_starlette(inner, prefix + route.path, host, regexes)
            else:
                # An ASGI app without routes of its own, such as StaticFiles, serves every
                # path below the mount.
                path = prefix + route.path + "/{path:path}"
                name = route.name or type(route.app).__qualname__
                yield _Route(path, _fill_braces(path, regexes), _ANY_METHOD, name, host)
        elif isinstance(route, Host):
            routes_of_host = _inner_routes(route.app) or ()
            host_sample = _fill_braces(route.host, regexes)
            yield from _walk_starlette(routes_of_host, prefix, host_sample, regexes)
        elif callable(getattr(route, "effective_route_contexts", None)):
            # FastAPI 0.165 keeps an included router as one entry and builds its routes lazily.
            for context in route.effective_route_contexts():
                if context.starlette_route is not None:
                    yield from _walk_starlette([context.starlette_route], prefix, host, regexes)
                    continue
                path = prefix + context.path
                methods = _without_automatic(context.methods) if context.methods else _ANY_METHOD
                yield _Route(path, _fill_braces(path, regexes), methods, context.name, host)
        else:
            path = prefix + str(getattr(route, "path", ""))
            name = getattr(route, "name", None) or type(route).__qualname__
            yield _Route(path, _fill_braces(path, regexes), _ANY_METHOD, name, host)


def _inner_routes(app: Any) -> list[Any] | None:
    """Return the routes of a mounted Starlette app or router, looking through middleware."""
    current = app
    for _ in range(_MAX_WRAPPERS):
        if _framework_of(current) == "starlette":
            routes: list[Any] = current.routes
            return routes
        current = getattr(current, "app", None)
        if current is None:
            break

    return None


def _litestar_routes(app: Any) -> Iterator[_Route]:
    from litestar.routes import ASGIRoute, HTTPRoute, WebSocketRoute

    for route in app.routes:
        sample = _fill_braces(route.path)
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                if _is_litestar_automatic_options(handler):
                    continue
                methods = _without_automatic(handler.http_methods, automatic_options=False)
                yield _Route(route.path, sample, methods, handler.name or handler.handler_name)
        elif isinstance(route, WebSocketRoute):
            socket_handler = route.route_handler
            name = socket_handler.name or socket_handler.handler_name
            yield _Route(route.path, sample, (_WEBSOCKET,), name)
        elif isinstance(route, ASGIRoute):
            asgi_handler = route.route_handler
            name = asgi_handler.name or asgi_handler.handler_name
            if asgi_handler.is_mount:
                path = route.path.rstrip("/") + "/{path:path}"
                yield _Route(path, _fill_braces(path), _ANY_METHOD, name)
            else:
                yield _Route(route.path, sample, _ANY_METHOD, name)


def _is_litestar_automatic_options(handler: Any) -> bool:
    """Tell the OPTIONS handler that Litestar adds to every path from one the app declared."""
    function = getattr(handler.fn, "__qualname__", "")
    return set(handler.http_methods) == {"OPTIONS"} and "create_options_handler" in function


def _werkzeug_routes(app: Any) -> Iterator[_Route]:
    """List the rules of a Flask or Quart app's Werkzeug URL map."""
    url_map = app.url_map
    for rule in url_map.iter_rules():
        sample = _fill_angles(rule.rule, url_map.converters)
        if getattr(rule, "websocket", False):
            methods: tuple[str, ...] = (_WEBSOCKET,)
        else:
            automatic = bool(getattr(rule, "provide_automatic_options", False))
            methods = _without_automatic(rule.methods or _ANY_METHOD, automatic)
        rule_host = _fill_angles(rule.host, url_map.converters) if rule.host else ""
        yield _Route(rule.rule, sample, methods, rule.endpoint, rule_host)


def _fill_angles(rule: str, converters: Mapping[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, arguments, name = match.group(1) or "default", match.group(2), match.group(3)
        if kind == "any" and arguments:
            return arguments.split(",", 1)[0].strip().strip("'\"")
        converter = converters.get(kind)
        return _sample_value(name, kind, getattr(converter, "regex", None))

    return _ANGLE_PARAMETER.sub(replace, rule)


def _django_routes(_app: Any) -> Iterator[_Route]:
    from django.urls import get_resolver

    yield from _walk_django(get_resolver().url_patterns, "/", "/")


def _walk_django(patterns: Iterable[Any], prefix: str, sample_prefix: str) -> Iterator[_Route]:
    from django.urls import URLPattern, URLResolver

    for entry in patterns:
        shown, sample = _django_piece(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _walk_django(entry.url_patterns, prefix + shown, sample_prefix + sample)
        elif isinstance(entry, URLPattern):
            methods = _django_methods(entry.callback)
            endpoint = entry.name or entry.lookup_str
            yield _Route(prefix + shown, sample_prefix + sample, methods, endpoint)


def _django_piece(pattern: Any) -> tuple[str, str]:
    """Return how a Django URL pattern reads, and a sample of the path it matches."""
    from django.urls.resolvers import RoutePattern
    from django.utils.regex_helper import normalize

    if isinstance(pattern, RoutePattern):
        route = str(pattern)

        def replace(match: re.Match[str]) -> str:
            converter = pattern.converters.get(match.group(2))
            return _sample_value(match.group(2), "", getattr(converter, "regex", None))

        return route, _DJANGO_PARAMETER.sub(replace, route)

    # A regular expression (re_path, or a locale prefix). Django's own reverse() helper gives
    # the literal form, and each sample value is tried for all groups until the pattern matches.
    regex = pattern.regex
    shown = regex.pattern.removeprefix("^").removesuffix("$").removesuffix(r"\Z")
    forms = normalize(regex.pattern)
    if not forms:
        return shown, shown
    template, parameters = forms[0]
    for candidate in _SAMPLE_VALUES:
        sample = template % {name: candidate for name in parameters}
        if regex.match(sample):
            return shown, sample

    # NOTE: no sample value satisfies this pattern, so the sample path may be one that
    # Django would not route here.
    return shown, template % {name: _SAMPLE_VALUES[0] for name in parameters}


def _django_methods(callback: Callable[..., Any]) -> tuple[str, ...]:
    """Return the methods of a class-based view, or every method for a function view."""
    view_class = getattr(callback, "view_class", None)
    if view_class is None:
        return _ANY_METHOD

    from django.views import View

    names = [name for name in view_class.http_method_names if hasattr(view_class, name)]
    declares_options = getattr(view_class, "options", None) is not View.options
    methods = _without_automatic(names, automatic_options=not declares_options)

    return methods or _ANY_METHOD


def _falcon_routes(app: Any) -> Iterator[_Route]:
    from falcon import inspect as falcon_inspect

    for route in falcon_inspect.inspect_routes(app):
        methods = _without_automatic(
            (method.method for method in route.methods if not method.internal),
            automatic_options=False,
        )
        if methods:
            yield _Route(route.path, _fill_braces(route.path), methods, route.class_name)
    for static in falcon_inspect.inspect_static_routes(app):
        path = static.prefix.rstrip("/") + "/{path}"
        yield _Route(path, _fill_braces(path), ("GET",), f"static:{static.directory}")
    # NOTE: sinks (app.add_sink) match a regular expression, not a route path, so they are
    # not listed.


_LISTERS: dict[str, Callable[[Any], Iterator[_Route]]] = {
    "starlette": _starlette_routes,
    "litestar": _litestar_routes,
    "django": _django_routes,
    "flask": _werkzeug_routes,
    "quart": _werkzeug_routes,
    "falcon": _falcon_routes,
}
