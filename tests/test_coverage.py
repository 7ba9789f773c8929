# SPDX-License-Identifier: Apache-2.0
"""check_routes lists the routes of real apps with their segments; the startup check stops them."""

from __future__ import annotations

import logging
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from zerotrust import ConfigurationError, Segment, ZeroTrustMiddleware
from zerotrust.coverage import CoverageReport, RouteCoverage, check_routes, load_app
from zerotrust.testing import allow, serve

VERIFIER = allow("alice")
POLICY = [
    Segment("health", paths=["/healthz"], public=True),
    Segment("items", paths=["/items/"], verifiers=[VERIFIER]),
    Segment("api", paths=["/api/"], verifiers=[VERIFIER]),
]


def row_for(report: CoverageReport, path: str) -> RouteCoverage:
    rows = [row for row in report.rows if row.path == path]
    assert 1 == len(rows), f"{path}: {report.rows}"
    return rows[0]


def as_table(report: CoverageReport) -> set[tuple[tuple[str, ...], str, str | None, str]]:
    return {(row.methods, row.path, row.segment, row.status) for row in report.rows}


# Starlette and FastAPI


async def endpoint(_request: Any) -> None:
    """A route endpoint; the check never calls it."""


def starlette_app(*extra_routes: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Host, Mount, Route, Router, WebSocketRoute

    return Starlette(
        routes=[
            Route("/healthz", endpoint),
            Route("/items/{item_id:int}", endpoint, methods=["GET", "POST"]),
            Mount(
                "/api", routes=[Route("/v1/{name}", endpoint), WebSocketRoute("/feed", endpoint)]
            ),
            Host("{tenant}.example.com", app=Router(routes=[Route("/items", endpoint)])),
            *extra_routes,
        ]
    )


class TestStarlette:
    def test_routes_and_segments(self) -> None:
        """Routes inside mounts and hosts are listed with their full path and segment."""
        report = check_routes(starlette_app(), POLICY, public_routes=["/healthz"])

        assert {
            (("GET",), "/healthz", "health", "public"),
            (("GET", "POST"), "/items/{item_id:int}", "items", "protected"),
            (("GET",), "/api/v1/{name}", "api", "protected"),
            (("WEBSOCKET",), "/api/feed", "api", "protected"),
            (("GET",), "/items", "items", "protected"),
        } == as_table(report)
        assert report.ok
        assert "starlette" == report.framework

    def test_sample_paths(self) -> None:
        """Path parameters become representative values, and a host route keeps its host."""
        report = check_routes(starlette_app(), POLICY, public_routes=["/healthz"])

        assert "/items/1" == row_for(report, "/items/{item_id:int}").sample_path
        assert "/api/v1/name" == row_for(report, "/api/v1/{name}").sample_path
        assert "tenant.example.com" == row_for(report, "/items").host

    def test_uncovered_route_fails(self) -> None:
        """A route that no segment matches fails the check and is named in the problems."""
        from starlette.routing import Route

        report = check_routes(
            starlette_app(Route("/admin/users", endpoint)), POLICY, public_routes=["/healthz"]
        )

        assert not report.ok
        assert "uncovered" == row_for(report, "/admin/users").status
        assert 1 == len(report.problems)
        assert "/admin/users" in report.problems[0]
        assert "no segment matches" in report.problems[0]

    def test_undeclared_public_fails(self) -> None:
        """A route in a public segment fails unless public_routes lists it."""
        report = check_routes(starlette_app(), POLICY)

        assert not report.ok
        assert "undeclared_public" == row_for(report, "/healthz").status
        assert "public_routes" in report.problems[0]

    def test_public_routes_rules(self) -> None:
        """public_routes takes path rules like a segment's, and reports rules that match nothing."""
        report = check_routes(starlette_app(), POLICY, public_routes=["/health", "/gone/"])

        assert not report.ok
        report = check_routes(starlette_app(), POLICY, public_routes=["/*", "/gone/"])

        assert report.ok
        assert ("/gone/",) == report.unused_public_routes

    def test_policy_from_add_middleware(self) -> None:
        """Without a policy argument, the policy given to add_middleware is used."""
        from starlette.routing import Route

        app = starlette_app(Route("/admin", endpoint))
        app.add_middleware(ZeroTrustMiddleware, policy=POLICY)

        report = check_routes(app, public_routes=["/healthz"])

        assert ["/admin"] == [row.path for row in report.rows if row.failed]

    def test_policy_from_wrapper(self) -> None:
        """A wrapping ZeroTrustMiddleware provides the policy, and an explicit one wins."""
        wrapped = ZeroTrustMiddleware(starlette_app(), policy=POLICY)
        other = [Segment("everything", paths=["/"], verifiers=[VERIFIER])]

        assert check_routes(wrapped, public_routes=["/healthz"]).ok
        assert {"everything"} == {row.segment for row in check_routes(wrapped, other).rows}

    def test_methods_split_by_segment(self) -> None:
        """Methods of one route that fall in different segments get one row each."""
        from starlette.routing import Route

        policy = [
            Segment("read", paths=["/items/"], methods=["GET"], public=True),
            Segment("write", paths=["/items/"], verifiers=[VERIFIER]),
        ]

        app = _single(Route("/items", endpoint, methods=["GET", "POST"]))

        report = check_routes(app, policy, public_routes=["/items"])

        assert {
            (("GET",), "/items", "read", "public"),
            (("POST",), "/items", "write", "protected"),
        } == as_table(report)

    def test_monitor_segment(self) -> None:
        """A route in a monitor-mode segment is reported as monitor and does not fail."""
        with pytest.warns(UserWarning, match="monitor mode"):
            policy = [Segment("trial", paths=["/"], verifiers=[VERIFIER], mode="monitor")]

        from starlette.routing import Route

        report = check_routes(_single(Route("/items", endpoint)), policy)

        assert {"monitor"} == {row.status for row in report.rows}
        assert report.ok

    def test_static_files_mount(self, tmp_path: Path) -> None:
        """A mounted app without routes counts as every path and method below the mount."""
        from starlette.routing import Mount
        from starlette.staticfiles import StaticFiles

        report = check_routes(
            _single(Mount("/static", app=StaticFiles(directory=tmp_path))), POLICY
        )

        row = row_for(report, "/static/{path:path}")
        assert "uncovered" == row.status
        assert ("GET", "POST", "PUT", "PATCH", "DELETE") == row.methods

    def test_fastapi_routers(self) -> None:
        """FastAPI routes from included routers are listed with their prefixes."""
        from fastapi import APIRouter, FastAPI

        inner = APIRouter(prefix="/orders")

        @inner.post("/{order_id}")
        async def update_order(order_id: int) -> None: ...

        router = APIRouter(prefix="/api")

        @router.get("/items/{item_id}")
        async def get_item(item_id: int) -> None: ...

        router.include_router(inner)
        app = FastAPI(openapi_url=None)
        app.include_router(router)
        app.add_middleware(ZeroTrustMiddleware, policy=POLICY)

        report = check_routes(app)

        assert {
            (("GET",), "/api/items/{item_id}", "api", "protected"),
            (("POST",), "/api/orders/{order_id}", "api", "protected"),
        } == as_table(report)
        assert "update_order" == row_for(report, "/api/orders/{order_id}").endpoint

    def test_format_lists_failures_first(self) -> None:
        """The text table puts failing rows before covered ones."""
        from starlette.routing import Route

        report = check_routes(_single(Route("/items", endpoint), Route("/admin", endpoint)), POLICY)
        lines = report.format().splitlines()

        assert lines[0].split() == ["status", "methods", "path", "segment", "endpoint"]
        assert lines[1].startswith("uncovered")
        assert "/admin" in lines[1]


def _single(*routes: Any) -> Any:
    from starlette.applications import Starlette

    return Starlette(routes=list(routes))


# Litestar


def litestar_app(*extra_handlers: Any) -> Any:
    from litestar import Controller, Litestar, Router, WebSocket, get, post, websocket
    from litestar.params import FromPath

    @get("/healthz")
    async def health() -> None: ...

    @post("/items/{item_id:int}")
    async def update_item(item_id: FromPath[int]) -> None: ...

    class Orders(Controller):
        path = "/orders"

        @get("/{order_id:uuid}")
        async def get_order(self, order_id: FromPath[str]) -> None: ...

    @websocket("/feed")
    async def feed(socket: WebSocket[Any, Any, Any]) -> None: ...

    api = Router("/api", route_handlers=[Orders, feed])
    return Litestar(route_handlers=[health, update_item, api, *extra_handlers], openapi_config=None)


class TestLitestar:
    def test_routes_and_segments(self) -> None:
        """Routes of routers and controllers are listed; the automatic OPTIONS is left out."""
        report = check_routes(litestar_app(), POLICY, public_routes=["/healthz"])

        assert {
            (("GET",), "/healthz", "health", "public"),
            (("POST",), "/items/{item_id:int}", "items", "protected"),
            (("GET",), "/api/orders/{order_id:uuid}", "api", "protected"),
            (("WEBSOCKET",), "/api/feed", "api", "protected"),
        } == as_table(report)
        assert "/api/orders/00000000-0000-0000-0000-000000000000" == (
            row_for(report, "/api/orders/{order_id:uuid}").sample_path
        )
        assert report.ok

    def test_uncovered_route_fails(self) -> None:
        """A Litestar route outside every segment fails the check."""
        from litestar import delete

        @delete("/admin/cache")
        async def clear_cache() -> None: ...

        app = ZeroTrustMiddleware(litestar_app(clear_cache), policy=POLICY)

        report = check_routes(app, public_routes=["/healthz"])

        assert not report.ok
        assert ("DELETE",) == row_for(report, "/admin/cache").methods
        assert "clear_cache" == row_for(report, "/admin/cache").endpoint
        assert "uncovered" == row_for(report, "/admin/cache").status

    def test_policy_from_define_middleware(self) -> None:
        """The policy given in Litestar(middleware=[DefineMiddleware(...)]) is found."""
        from litestar import Litestar, get
        from litestar.middleware import DefineMiddleware

        @get("/reports")
        async def reports() -> None: ...

        app = Litestar(
            route_handlers=[reports],
            middleware=[DefineMiddleware(ZeroTrustMiddleware, policy=POLICY)],
            openapi_config=None,
        )

        assert ["/reports"] == [row.path for row in check_routes(app).rows if row.failed]


# Django


@pytest.fixture(name="django_urls")
def fixture_django_urls() -> Iterator[types.ModuleType]:
    """A URL configuration module, installed as ROOT_URLCONF for the test."""
    import django
    from django.conf import settings
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure(SECRET_KEY="coverage-test-" + "x" * 40, ALLOWED_HOSTS=["127.0.0.1"])
        django.setup()
    urls = types.ModuleType("zerotrust_coverage_test_urls")
    with override_settings(ROOT_URLCONF=urls):
        yield urls


class TestDjango:
    def test_includes_and_patterns(self, django_urls: types.ModuleType) -> None:
        """path(), re_path() and include() routes are listed with sample paths and methods."""
        from django.core.handlers.asgi import ASGIHandler
        from django.http import HttpResponse
        from django.urls import include, path, re_path
        from django.views import View

        def view(_request: Any, **_parameters: Any) -> HttpResponse:
            return HttpResponse()

        class ItemView(View):
            def get(self, _request: Any) -> HttpResponse:
                return HttpResponse()

            def post(self, _request: Any) -> HttpResponse:
                return HttpResponse()

        items = [
            path("<int:pk>/", view, name="item-detail"),
            re_path(r"^archive/(?P<year>[0-9]{4})/$", view),
            path("new/", ItemView.as_view()),
        ]
        django_urls.urlpatterns = [
            path("healthz", view),
            path("items/", include(items)),
            re_path(r"^api/", include([path("<slug:name>", view)])),
        ]

        report = check_routes(ASGIHandler(), POLICY, public_routes=["/healthz"])

        assert "django" == report.framework
        assert report.ok
        detail = row_for(report, "/items/<int:pk>/")
        assert ("/items/1/", "item-detail", "items") == (
            detail.sample_path,
            detail.endpoint,
            detail.segment,
        )
        assert ("DELETE", "GET", "PATCH", "POST", "PUT") == tuple(sorted(detail.methods))
        assert (
            "/items/archive/1/"
            != row_for(report, r"/items/archive/(?P<year>[0-9]{4})/").sample_path
        )
        assert ("GET", "POST") == row_for(report, "/items/new/").methods
        assert "/api/name" == row_for(report, "/api/<slug:name>").sample_path

    def test_uncovered_route_fails(self, django_urls: types.ModuleType) -> None:
        """A Django URL outside every segment fails the check, through the wrapping middleware."""
        from django.core.handlers.asgi import ASGIHandler
        from django.http import HttpResponse
        from django.urls import path

        def view(_request: Any) -> HttpResponse:
            return HttpResponse()

        django_urls.urlpatterns = [path("items/", view), path("admin/login/", view)]
        app = ZeroTrustMiddleware(ASGIHandler(), policy=POLICY)

        report = check_routes(app)

        assert ["/admin/login/"] == [row.path for row in report.rows if row.failed]

    def test_startup_check_rejected(self, django_urls: types.ModuleType) -> None:
        """check_routes=True on Django raises, since its ASGI handler never starts a lifespan."""
        from django.core.handlers.asgi import ASGIHandler

        with pytest.raises(ConfigurationError, match="lifespan"):
            ZeroTrustMiddleware(ASGIHandler(), policy=POLICY, check_routes=True)


# Flask, Quart and Falcon


class TestFlask:
    def test_blueprints_and_converters(self) -> None:
        """Blueprint rules are listed; automatic OPTIONS and HEAD are left out."""
        from flask import Blueprint, Flask

        app = Flask(__name__, static_folder=None)
        api = Blueprint("api", __name__, url_prefix="/api")

        @api.route("/files/<path:name>", methods=["GET", "PUT"])
        def file(name: str) -> str:
            return name

        @app.get("/items/<int:item_id>")
        def item(item_id: int) -> str:
            return str(item_id)

        app.register_blueprint(api)

        report = check_routes(app, POLICY)

        assert {
            (("GET", "PUT"), "/api/files/<path:name>", "api", "protected"),
            (("GET",), "/items/<int:item_id>", "items", "protected"),
        } == as_table(report)
        assert "api.file" == row_for(report, "/api/files/<path:name>").endpoint
        assert "/items/1" == row_for(report, "/items/<int:item_id>").sample_path

    def test_policy_from_wsgi_middleware(self) -> None:
        """The policy of a ZeroTrustWSGIMiddleware on app.wsgi_app is found, and gaps fail."""
        from flask import Flask

        from zerotrust.wsgi import ZeroTrustWSGIMiddleware

        app = Flask(__name__)

        @app.get("/items")
        def items() -> str:
            return ""

        app.wsgi_app = ZeroTrustWSGIMiddleware(app.wsgi_app, policy=POLICY)  # type: ignore[method-assign]

        report = check_routes(app)

        assert {"/static/<path:filename>"} == {row.path for row in report.rows if row.failed}
        assert "/static/filename" == row_for(report, "/static/<path:filename>").sample_path


class TestQuartAndFalcon:
    def test_quart_routes(self) -> None:
        """Quart's HTTP and websocket rules are listed, with the policy from app.asgi_app."""
        from quart import Quart

        app = Quart(__name__, static_folder=None)

        @app.get("/items/<uuid:item_id>")
        async def item(item_id: str) -> str:
            return item_id

        @app.websocket("/api/feed")
        async def feed() -> None: ...

        @app.post("/admin")
        async def admin() -> str:
            return ""

        app.asgi_app = ZeroTrustMiddleware(app.asgi_app, policy=POLICY)  # type: ignore[method-assign]

        report = check_routes(app)

        assert {
            (("GET",), "/items/<uuid:item_id>", "items", "protected"),
            (("WEBSOCKET",), "/api/feed", "api", "protected"),
            (("POST",), "/admin", None, "uncovered"),
        } == as_table(report)

    def test_falcon_routes(self) -> None:
        """Falcon responders are listed per method; default responders are left out."""
        import falcon.asgi

        class Items:
            async def on_get(self, _req: Any, _resp: Any, item_id: int) -> None: ...

            async def on_delete(self, _req: Any, _resp: Any, item_id: int) -> None: ...

        class Admin:
            async def on_get(self, _req: Any, _resp: Any) -> None: ...

        api = falcon.asgi.App()
        api.add_route("/items/{item_id:int}", Items())
        api.add_route("/admin", Admin())

        report = check_routes(ZeroTrustMiddleware(api, policy=POLICY))

        assert {
            (("DELETE", "GET"), "/items/{item_id:int}", "items", "protected"),
            (("GET",), "/admin", None, "uncovered"),
        } == as_table(report)


# Errors


class TestErrors:
    def test_unsupported_app(self) -> None:
        """An app whose routes cannot be listed raises, naming its type."""

        async def bare_app(scope: Any, receive: Any, send: Any) -> None: ...

        with pytest.raises(ConfigurationError, match=r"cannot list the routes of .*function"):
            check_routes(bare_app, POLICY)

    def test_missing_policy(self) -> None:
        """An app without middleware and without a policy argument raises."""
        with pytest.raises(ConfigurationError, match="no policy was given"):
            check_routes(_single())

    def test_public_routes_string(self) -> None:
        """A single string for public_routes raises instead of being read letter by letter."""
        with pytest.raises(ConfigurationError, match="must be a list of paths"):
            check_routes(_single(), POLICY, public_routes="/healthz")

    def test_public_routes_without_check(self) -> None:
        """public_routes on the middleware without check_routes=True raises."""
        with pytest.raises(ConfigurationError, match="pass check_routes=True"):
            ZeroTrustMiddleware(_single(), policy=POLICY, public_routes=["/healthz"])

    def test_startup_check_unsupported_app(self) -> None:
        """check_routes=True on an app whose routes cannot be listed raises at construction."""

        async def bare_app(scope: Any, receive: Any, send: Any) -> None: ...

        with pytest.raises(ConfigurationError, match="cannot list the routes"):
            ZeroTrustMiddleware(bare_app, policy=POLICY, check_routes=True)


# The startup check


def failing_app(framework: str) -> Any:
    """An app of a lifespan-capable framework with a route outside every segment."""
    if framework == "starlette":
        from starlette.routing import Route

        app = _single(Route("/healthz", endpoint), Route("/admin", endpoint))
        app.add_middleware(
            ZeroTrustMiddleware, policy=POLICY, check_routes=True, public_routes=["/healthz"]
        )
        return app

    if framework == "litestar":
        from litestar import get

        @get("/admin")
        async def litestar_admin() -> None: ...

        return ZeroTrustMiddleware(
            litestar_app(litestar_admin),
            policy=POLICY,
            check_routes=True,
            public_routes=["/healthz"],
        )

    if framework == "quart":
        from quart import Quart

        quart = Quart(__name__, static_folder=None)

        @quart.get("/admin")
        async def quart_admin() -> str:
            return ""

        quart.asgi_app = ZeroTrustMiddleware(  # type: ignore[method-assign]
            quart.asgi_app, policy=POLICY, check_routes=True
        )
        return quart

    import falcon.asgi

    class Admin:
        async def on_get(self, _req: Any, _resp: Any) -> None: ...

    falcon_app = falcon.asgi.App()
    falcon_app.add_route("/admin", Admin())
    return ZeroTrustMiddleware(falcon_app, policy=POLICY, check_routes=True)


@pytest.mark.parametrize("framework", ["starlette", "litestar", "quart", "falcon"])
async def test_startup_check_reports_failure(framework: str) -> None:
    """At lifespan startup the server receives startup.failed, naming the uncovered route."""
    app = failing_app(framework)
    incoming = [{"type": "lifespan.startup"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raised: list[BaseException] = []
    # Litestar raises the error inside an exception group, the other frameworks raise it bare.
    try:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    except* ConfigurationError as group:
        raised.extend(group.exceptions)

    assert 1 == len(raised)
    assert "route check failed" in str(raised[0])
    assert ["lifespan.startup.failed"] == [message["type"] for message in sent]
    assert "GET /admin" in sent[0]["message"]


@pytest.mark.served
@pytest.mark.parametrize("framework", ["starlette", "litestar", "quart", "falcon"])
def test_uvicorn_refuses_to_start(framework: str, caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn, with its default lifespan setting, exits instead of serving an uncovered app."""
    config = uvicorn.Config(
        failing_app(framework), host="127.0.0.1", port=0, log_config=None, proxy_headers=False
    )
    server = uvicorn.Server(config)
    exit_codes: list[object] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as exit:
            exit_codes.append(exit.code)

    thread = threading.Thread(target=run, daemon=True)
    # uvicorn's loggers may not propagate to the root logger, where caplog listens.
    uvicorn_logger = logging.getLogger("uvicorn.error")
    uvicorn_logger.addHandler(caplog.handler)
    try:
        thread.start()
        thread.join(20)
    finally:
        uvicorn_logger.removeHandler(caplog.handler)

    assert not thread.is_alive()
    assert not server.started
    assert [3] == exit_codes
    assert any("GET /admin" in record.getMessage() for record in caplog.records)


@pytest.mark.served
def test_covered_app_starts() -> None:
    """An app whose routes are all covered starts with check_routes=True and serves requests."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def health(_request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = _single(Route("/healthz", health), Route("/items", endpoint))
    app.add_middleware(
        ZeroTrustMiddleware, policy=POLICY, check_routes=True, public_routes=["/healthz"]
    )

    with serve(app, lifespan="on") as base_url:
        response = httpx.get(f"{base_url}/healthz", trust_env=False, timeout=10)

    assert 200 == response.status_code


# load_app


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory with a package that defines an app; sys.path is restored after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    package = tmp_path / "coverage_project"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text("class Holder:\n    app = 'the app'\n\napp = 'the app'\n")
    (package / "broken.py").write_text("import coverage_project_missing_dependency\n")
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith("coverage_project")]:
        del sys.modules[name]


class TestLoadApp:
    def test_module_attribute(self, project: Path) -> None:
        """module:attribute and module:Class.attribute are imported from app_dir."""
        assert "the app" == load_app("coverage_project.main:app", app_dir=project)
        assert "the app" == load_app("coverage_project.main:Holder.app", app_dir=project)

    def test_current_directory(self, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without app_dir the current directory is searched, as uvicorn does."""
        monkeypatch.chdir(project)

        assert "the app" == load_app("coverage_project.main:app")

    @pytest.mark.parametrize(
        ("reference", "message"),
        [
            ("coverage_project.main", "must look like module:attribute"),
            (":app", "must look like module:attribute"),
            ("coverage_project.nothing:app", "was not found"),
            ("coverage_project.main:missing", "has no attribute 'missing'"),
        ],
    )
    def test_invalid_reference(self, project: Path, reference: str, message: str) -> None:
        """A malformed reference, a missing module or a missing attribute raises clearly."""
        with pytest.raises(ConfigurationError, match=message):
            load_app(reference, app_dir=project)

    def test_error_inside_module(self, project: Path) -> None:
        """An import error raised by the app's own code propagates unchanged."""
        with pytest.raises(ModuleNotFoundError, match="coverage_project_missing_dependency"):
            load_app("coverage_project.broken:app", app_dir=project)
