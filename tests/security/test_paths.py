# SPDX-License-Identifier: Apache-2.0
"""
Attack class: path confusion between the access decision and the application's router.

Each case sends a raw request target, byte for byte, to a Starlette app served by uvicorn on
127.0.0.1: a public area everywhere and an admin area under ``/admin`` that needs a token.
Encoded dots and slashes, double and mixed encoding, backslashes, repeated slashes, trailing
dots, case variants, ``;`` parameters, Unicode look-alikes, mounts and ``root_path``, unusual
methods and URL-rewriting headers must never bring a request without credentials to the admin
handler. A case ends in one of four ways: the middleware denies it as ambiguous (403 and a
path reason), the decision and the router both see the admin area (401), both see the public
area (200 from the public handler), or the server rejects the request line (400).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from zerotrust import JWTVerifier, MemorySink, Segment, ZeroTrustMiddleware
from zerotrust.testing import TokenIssuer, capture_events, serve

from .support import (
    AUDIENCE,
    RawResponse,
    Recorder,
    asgi_call,
    http_scope,
    protect,
    raw_request,
    wait_until,
)

pytestmark = pytest.mark.served

AMBIGUOUS = "ambiguous"
ADMIN = "admin"
PUBLIC = "public"
SERVER = "server"


@dataclass
class Served:
    port: int
    recorder: Recorder
    middleware: ZeroTrustMiddleware


@pytest.fixture(name="served", scope="module", params=["reject", "rewrite"])
def fixture_served(request: pytest.FixtureRequest, issuer: TokenIssuer) -> Iterator[Served]:
    """The protected app under uvicorn, once per path normalisation mode."""
    recorder = Recorder()
    middleware = protect(issuer, recorder, path_normalization=request.param)
    with serve(middleware) as base_url:
        yield Served(int(base_url.rsplit(":", 1)[1]), recorder, middleware)


@pytest.fixture(name="admin_token", scope="module")
def fixture_admin_token(issuer: TokenIssuer) -> str:
    return issuer.token("root", audience=AUDIENCE, roles=["admin"], scopes=["admin:read"])


def send(
    served: Served,
    target: bytes,
    *,
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[RawResponse, dict[str, Any] | None]:
    """Send one raw request and return the response and its access event, if it has one."""
    request_id = uuid.uuid4().hex
    all_headers = [(b"x-request-id", request_id.encode()), *(headers or [])]
    with capture_events() as events:
        response = raw_request(served.port, target, method=method, headers=all_headers)
        if response.status != 400:
            wait_until(lambda: any(e["request_id"] == request_id for e in events))
    matching = [event for event in events if event["request_id"] == request_id]
    assert len(matching) <= 1

    return response, (matching[0] if matching else None)


def check_outcome(
    served: Served, response: RawResponse, event: dict[str, Any] | None, outcome: str, reason: str
) -> None:
    """Assert that the response and event match ``outcome`` and the admin handler never ran."""
    assert [] == served.recorder.admin
    if outcome == SERVER:
        assert 400 == response.status
        assert event is None
        assert [] == served.recorder.public
        return

    assert event is not None
    if outcome == AMBIGUOUS:
        assert 403 == response.status
        assert [reason] == event["reasons"]
        assert [] == served.recorder.public
    elif outcome == ADMIN:
        assert 401 == response.status
        assert "admin" == event["segment"]
        assert ["token_missing"] == event["reasons"]
    else:
        assert 200 == response.status
        assert "public" == event["segment"]
        assert 1 == len(served.recorder.public)


# Each target: the outcome with path_normalization="reject", then with "rewrite" when it differs.
PATH_CASES = [
    # The admin area itself, as a baseline
    pytest.param(b"/admin", (ADMIN, ""), None, id="plain-admin"),
    pytest.param(b"/admin/users", (ADMIN, ""), None, id="plain-admin-below"),
    # Encoded letters decode once to the admin area, for the router and the decision alike
    pytest.param(b"/%61dmin/users", (ADMIN, ""), None, id="encoded-letter"),
    pytest.param(b"/a%64min/users", (ADMIN, ""), None, id="encoded-inner-letter"),
    pytest.param(b"/%61%64%6D%69%6E/users", (ADMIN, ""), None, id="encoded-whole-word"),
    # Encoded dots and slashes
    pytest.param(
        b"/public/%2e%2e/admin/users", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="encoded-dots"
    ),
    pytest.param(
        b"/public/%2E%2e/admin/users",
        (AMBIGUOUS, "path_not_normalized"),
        ADMIN,
        id="encoded-dots-mixed-case",
    ),
    pytest.param(
        b"/public/.%2e/admin/users",
        (AMBIGUOUS, "path_not_normalized"),
        ADMIN,
        id="half-encoded-dots",
    ),
    pytest.param(
        b"/%2e/admin/users", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="encoded-single-dot"
    ),
    pytest.param(
        b"/public/..%2fadmin/users", (AMBIGUOUS, "encoded_slash"), None, id="encoded-slash"
    ),
    pytest.param(
        b"/public%2F..%2Fadmin/users", (AMBIGUOUS, "encoded_slash"), None, id="encoded-slash-upper"
    ),
    pytest.param(
        b"/admin%2fusers", (AMBIGUOUS, "encoded_slash"), None, id="encoded-slash-in-admin"
    ),
    pytest.param(
        b"/public/..%5cadmin/users", (AMBIGUOUS, "encoded_backslash"), None, id="encoded-backslash"
    ),
    # Double and overlong encoding
    pytest.param(
        b"/public/%252e%252e/admin/users",
        (AMBIGUOUS, "double_encoding"),
        None,
        id="double-encoded-dots",
    ),
    pytest.param(
        b"/public/%252fadmin/users", (AMBIGUOUS, "double_encoding"), None, id="double-encoded-slash"
    ),
    pytest.param(
        b"/%2561dmin/users", (AMBIGUOUS, "double_encoding"), None, id="double-encoded-letter"
    ),
    pytest.param(
        b"/public/%25%32%65%25%32%65/admin",
        (AMBIGUOUS, "double_encoding"),
        None,
        id="nested-encoding",
    ),
    pytest.param(
        b"/public/%c0%ae%c0%ae/admin/users",
        (AMBIGUOUS, "invalid_utf8_in_path"),
        None,
        id="overlong-utf8-dots",
    ),
    pytest.param(
        b"/public/%c0%afadmin/users",
        (AMBIGUOUS, "invalid_utf8_in_path"),
        None,
        id="overlong-utf8-slash",
    ),
    pytest.param(
        b"/%u0061dmin/users", (AMBIGUOUS, "malformed_percent_encoding"), None, id="iis-u-encoding"
    ),
    pytest.param(
        b"/admin%/users", (AMBIGUOUS, "malformed_percent_encoding"), None, id="stray-percent"
    ),
    # Backslashes
    pytest.param(
        b"/public\\..\\admin\\users", (AMBIGUOUS, "backslash_in_path"), None, id="backslash-dots"
    ),
    pytest.param(
        b"/admin\\users", (AMBIGUOUS, "backslash_in_path"), None, id="backslash-separator"
    ),
    # Repeated slashes and dot segments
    pytest.param(
        b"//admin/users", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="leading-double-slash"
    ),
    pytest.param(b"///admin//users", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="many-slashes"),
    pytest.param(b"/./admin/users", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="dot-segment"),
    pytest.param(
        b"/admin/./users", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="inner-dot-segment"
    ),
    pytest.param(
        b"/public/../admin/users", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="dot-dot-climb"
    ),
    pytest.param(
        b"/../../admin/users", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="climb-above-root"
    ),
    pytest.param(
        b"/admin/../public", (AMBIGUOUS, "path_not_normalized"), PUBLIC, id="climb-out-of-admin"
    ),
    pytest.param(
        b"/admin/users//", (AMBIGUOUS, "path_not_normalized"), ADMIN, id="trailing-double-slash"
    ),
    # Trailing dots and slashes: a dot inside a segment is a different name, not a dot segment
    pytest.param(b"/admin./users", (PUBLIC, ""), None, id="trailing-dot-on-segment"),
    pytest.param(b"/admin../users", (PUBLIC, ""), None, id="trailing-dots-on-segment"),
    pytest.param(b"/admin/users.", (ADMIN, ""), None, id="trailing-dot-in-admin"),
    pytest.param(b"/admin/users/", (ADMIN, ""), None, id="trailing-slash"),
    pytest.param(b"/admin/", (ADMIN, ""), None, id="admin-trailing-slash"),
    # Case variants: the router is case-sensitive, and so is the policy
    pytest.param(b"/ADMIN/users", (PUBLIC, ""), None, id="upper-case"),
    pytest.param(b"/Admin/users", (PUBLIC, ""), None, id="title-case"),
    pytest.param(b"/%41DMIN/users", (PUBLIC, ""), None, id="encoded-upper-case"),
    # Semicolon parameters (Tomcat and Spring strip them; Starlette and zerotrust do not)
    pytest.param(b"/admin;x=1/users", (PUBLIC, ""), None, id="matrix-parameter"),
    pytest.param(b"/admin;", (PUBLIC, ""), None, id="empty-matrix-parameter"),
    pytest.param(b"/;/admin/users", (PUBLIC, ""), None, id="semicolon-segment-before"),
    pytest.param(b"/admin/;/users", (ADMIN, ""), None, id="semicolon-segment-inside"),
    pytest.param(b"/admin%3bx=1/users", (PUBLIC, ""), None, id="encoded-semicolon"),
    # Unicode look-alikes and normalisation forms are other names, never the admin area
    pytest.param(b"/%EF%BD%81dmin/users", (PUBLIC, ""), None, id="fullwidth-letter"),
    pytest.param(b"/%EF%BC%A1DMIN/users", (PUBLIC, ""), None, id="fullwidth-upper-letter"),
    pytest.param(b"/public%EF%BC%8F..%EF%BC%8Fadmin", (PUBLIC, ""), None, id="fullwidth-solidus"),
    pytest.param(b"/admin%EF%BC%8Fusers", (PUBLIC, ""), None, id="fullwidth-solidus-after-admin"),
    pytest.param(b"/%E2%80%A5/admin", (PUBLIC, ""), None, id="two-dot-leader"),
    pytest.param(b"/public/%EF%B8%B0/admin", (PUBLIC, ""), None, id="vertical-two-dot-leader"),
    pytest.param(b"/admin%E2%80%8B/users", (PUBLIC, ""), None, id="zero-width-space"),
    pytest.param(b"/ad%C2%ADmin/users", (PUBLIC, ""), None, id="soft-hyphen"),
    pytest.param(b"/%E2%84%AA/admin", (PUBLIC, ""), None, id="kelvin-sign"),
    pytest.param(b"/a%CC%8Admin/users", (PUBLIC, ""), None, id="combining-ring"),
    pytest.param(b"/\xef\xbd\x81dmin/users", (SERVER, ""), None, id="raw-utf8-bytes"),
    pytest.param(b"/admin/\xff", (SERVER, ""), None, id="raw-invalid-byte"),
    # Control characters, whitespace, fragments and query strings
    pytest.param(b"/admin%00/users", (AMBIGUOUS, "control_character_in_path"), None, id="nul"),
    pytest.param(
        b"/admin/users%00.json", (AMBIGUOUS, "control_character_in_path"), None, id="nul-extension"
    ),
    pytest.param(b"/admin%0d%0a/users", (AMBIGUOUS, "control_character_in_path"), None, id="crlf"),
    pytest.param(b"/admin%09/users", (AMBIGUOUS, "control_character_in_path"), None, id="tab"),
    pytest.param(b"/admin%20/users", (PUBLIC, ""), None, id="encoded-space"),
    pytest.param(b"/admin#/users", (PUBLIC, ""), None, id="fragment-sign"),
    pytest.param(b"/admin?/users", (ADMIN, ""), None, id="query-after-admin"),
    pytest.param(b"/public?/admin/users", (PUBLIC, ""), None, id="admin-in-query"),
    pytest.param(b"/public?x=/../admin", (PUBLIC, ""), None, id="dots-in-query"),
    # Request-target forms other than origin-form
    pytest.param(
        b"http://127.0.0.1/admin/users", (AMBIGUOUS, "path_not_absolute"), None, id="absolute-form"
    ),
    pytest.param(b"admin/users", (AMBIGUOUS, "path_not_absolute"), None, id="relative-target"),
    pytest.param(b"*", (AMBIGUOUS, "path_not_absolute"), None, id="asterisk-form"),
]


class TestPathTricks:
    @pytest.mark.parametrize(("target", "outcome", "rewritten"), PATH_CASES)
    def test_no_admin_without_token(
        self, served: Served, target: bytes, outcome: tuple[str, str], rewritten: str | None
    ) -> None:
        """A path trick without a token never reaches the admin handler."""
        served.recorder.clear()
        if served.middleware.path_normalization == "rewrite" and rewritten is not None:
            outcome = (rewritten, "")

        response, event = send(served, target)

        check_outcome(served, response, event, *outcome)

    def test_admin_reachable_with_token(self, served: Served, admin_token: str) -> None:
        """A valid admin token reaches the admin handler, so the cases above can fail."""
        served.recorder.clear()

        response, _ = send(
            served, b"/admin/users", headers=[(b"authorization", f"Bearer {admin_token}".encode())]
        )

        assert 200 == response.status
        assert ["/admin/users"] == served.recorder.admin

    def test_oversized_path(self, served: Served) -> None:
        """A path over 8 KiB is denied as too long before any matching."""
        served.recorder.clear()

        response, event = send(served, b"/admin/" + b"a" * 9000)

        check_outcome(served, response, event, AMBIGUOUS, "path_too_long")


class TestMethods:
    @pytest.mark.parametrize(
        "method",
        [b"HEAD", b"OPTIONS", b"POST", b"PUT", b"DELETE", b"PATCH", b"PROPFIND", b"get", b"Post"],
    )
    def test_method_needs_token(self, served: Served, method: bytes) -> None:
        """Every method, including HEAD, OPTIONS and a lower-case one, needs a token."""
        served.recorder.clear()

        response, event = send(served, b"/admin/users", method=method)

        assert 401 == response.status
        assert event is not None
        assert "admin" == event["segment"]
        assert [] == served.recorder.admin
        if method == b"HEAD":
            assert b"" == response.body

    @pytest.mark.parametrize(
        "header",
        [b"x-http-method-override", b"x-http-method", b"x-method-override"],
    )
    def test_method_override_ignored(self, served: Served, admin_token: str, header: bytes) -> None:
        """A DELETE that claims to be a GET still needs the scope of DELETE."""
        served.recorder.clear()
        headers = [(b"authorization", f"Bearer {admin_token}".encode()), (header, b"GET")]

        response, event = send(served, b"/admin/users", method=b"DELETE", headers=headers)

        assert 403 == response.status
        assert event is not None
        assert ["insufficient_scope"] == event["reasons"]
        assert [] == served.recorder.admin

    def test_override_to_post_ignored(self, served: Served) -> None:
        """A GET that claims to be another method is decided as the GET it is."""
        served.recorder.clear()

        response, event = send(
            served, b"/admin/users", headers=[(b"x-http-method-override", b"OPTIONS")]
        )

        assert 401 == response.status
        assert event is not None
        assert "GET" == event["method"]


class TestRewriteHeaders:
    @pytest.mark.parametrize("header", [b"x-original-url", b"x-rewrite-url", b"x-forwarded-uri"])
    def test_public_target_to_admin(self, served: Served, header: bytes) -> None:
        """A public request naming the admin area in a rewrite header stays public."""
        served.recorder.clear()

        response, event = send(served, b"/public", headers=[(header, b"/admin/users")])

        assert 200 == response.status
        assert event is not None
        assert "public" == event["segment"]
        assert [] == served.recorder.admin
        assert ["/public"] == served.recorder.public

    @pytest.mark.parametrize("header", [b"x-original-url", b"x-rewrite-url", b"x-forwarded-prefix"])
    def test_admin_target_to_public(self, served: Served, header: bytes) -> None:
        """An admin request naming a public path in a rewrite header still needs a token."""
        served.recorder.clear()

        response, event = send(served, b"/admin/users", headers=[(header, b"/public")])

        assert 401 == response.status
        assert event is not None
        assert "admin" == event["segment"]


# Mounts and root_path ----------------------------------------------------------------------------


@pytest.fixture(name="mounted", scope="module")
def fixture_mounted(issuer: TokenIssuer) -> Iterator[Served]:
    """The protected app mounted under ``/sub`` of an unprotected outer app."""
    recorder = Recorder()
    middleware = protect(issuer, recorder)
    outer = Starlette(routes=[Mount("/sub", app=middleware)])
    with serve(outer) as base_url:
        yield Served(int(base_url.rsplit(":", 1)[1]), recorder, middleware)


class TestMount:
    @pytest.mark.parametrize(
        ("target", "outcome", "reason"),
        [
            pytest.param(b"/sub/admin/users", ADMIN, "", id="admin"),
            pytest.param(b"/sub/%61dmin/users", ADMIN, "", id="encoded-letter"),
            pytest.param(
                b"/sub/public/../admin/users", AMBIGUOUS, "path_not_normalized", id="dots"
            ),
            pytest.param(b"/sub//admin/users", AMBIGUOUS, "path_not_normalized", id="double-slash"),
            pytest.param(b"/sub/admin%2fusers", AMBIGUOUS, "encoded_slash", id="encoded-slash"),
            pytest.param(b"/sub/ADMIN/users", PUBLIC, "", id="upper-case"),
            pytest.param(b"/sub/public", PUBLIC, "", id="public"),
        ],
    )
    def test_mounted(self, mounted: Served, target: bytes, outcome: str, reason: str) -> None:
        """Behind a mount, the decision uses the path inside the mount, as the router does."""
        mounted.recorder.clear()

        response, event = send(mounted, target)

        check_outcome(mounted, response, event, outcome, reason)

    def test_outside_mount(self, mounted: Served) -> None:
        """A request outside the mount never reaches the protected app at all."""
        mounted.recorder.clear()

        response, event = send(mounted, b"/admin/users")

        assert 404 == response.status
        assert event is None
        assert [] == mounted.recorder.admin


class TestRootPath:
    @pytest.mark.parametrize(
        ("path", "raw_path", "root_path", "status"),
        [
            pytest.param("/app/admin/users", b"/admin/users", "/app", 401, id="prefixed"),
            pytest.param("/app/admin", b"/admin", "/app", 401, id="prefixed-exact"),
            pytest.param("/admin/users", b"/admin/users", "/app", 401, id="not-prefixed"),
            pytest.param("/admin/users", b"/admin/users", "/adm", 401, id="root-path-in-name"),
            pytest.param("/app/", b"/", "/app", 200, id="mount-root"),
            pytest.param("/appadmin/users", b"/appadmin/users", "/app", 200, id="no-boundary"),
            pytest.param("/app/app/admin", b"/app/admin", "/app", 200, id="prefix-twice"),
            pytest.param("/app/admin/users", b"/admin/x", "/app", 403, id="raw-path-differs"),
        ],
    )
    async def test_root_path(
        self, issuer: TokenIssuer, path: str, raw_path: bytes, root_path: str, status: int
    ) -> None:
        """The decision strips ``root_path`` on a segment boundary only, as Starlette does."""
        recorder = Recorder()
        middleware = protect(issuer, recorder)
        scope = http_scope(path, raw_path=raw_path, root_path=root_path)

        with capture_events() as events:
            sent = await asgi_call(middleware, scope)

        start = next(message for message in sent if message["type"] == "http.response.start")
        assert status == start["status"]
        assert [] == recorder.admin
        assert 1 == len(events)

    def test_served_root_path(self, issuer: TokenIssuer) -> None:
        """Under uvicorn's ``root_path``, the admin area needs a token and no prefix hides it."""
        recorder = Recorder()
        middleware = protect(issuer, recorder)
        with serve(middleware, root_path="/app") as base_url:
            port = int(base_url.rsplit(":", 1)[1])
            admin = raw_request(port, b"/admin/users")
            # uvicorn puts root_path before the target, so the router matches /app/admin/users.
            doubled = raw_request(port, b"/app/admin/users")
            dotted = raw_request(port, b"/app/../admin/users")

        assert 401 == admin.status
        assert 200 == doubled.status
        assert 403 == dotted.status
        assert [] == recorder.admin
        assert ["/app/app/admin/users"] == recorder.public


# Method case ------------------------------------------------------------------------------------


class UpperCasingRouter:
    """
    A router that matches methods case-insensitively, as Django's ``ASGIRequest`` and Werkzeug
    do when they upper-case ``REQUEST_METHOD``: ``post`` reaches the POST handler.
    """

    def __init__(self) -> None:
        self.writes: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"].upper() == "POST":
            self.writes.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


class TestMethodCase:
    def protect(self, router: UpperCasingRouter, issuer: TokenIssuer) -> ZeroTrustMiddleware:
        """Protect writes under /admin only, and let every read through."""
        identity = JWTVerifier(
            issuer=issuer.issuer, audience=AUDIENCE, algorithms=["RS256"], keys=issuer.jwks()
        )
        policy = [
            Segment("reads", paths=["/"], public=True),
            Segment(
                "admin-writes",
                paths=["/admin/"],
                methods=["POST", "PUT", "PATCH", "DELETE"],
                verifiers=[identity],
                roles=["admin"],
            ),
        ]
        return ZeroTrustMiddleware(router, policy=policy, events=MemorySink())

    @pytest.mark.parametrize("method", ["post", "Post", "pOST", "put", "delete"])
    async def test_other_case_write_needs_token(self, issuer: TokenIssuer, method: str) -> None:
        """A write method in another case is decided as that write, in the write segment."""
        router = UpperCasingRouter()
        middleware = self.protect(router, issuer)

        with capture_events() as events:
            sent = await asgi_call(middleware, http_scope("/admin/users", method=method))

        assert 401 == sent[0]["status"]
        assert "admin-writes" == events[0]["segment"]
        assert method.upper() == events[0]["method"]
        assert [] == router.writes

    async def test_upper_case_write_needs_token(self, issuer: TokenIssuer) -> None:
        """The upper-case write is decided in the write segment, so the case above can fail."""
        router = UpperCasingRouter()
        middleware = self.protect(router, issuer)

        sent = await asgi_call(middleware, http_scope("/admin/users", method="POST"))

        assert 401 == sent[0]["status"]
        assert [] == router.writes

    @pytest.mark.parametrize("method", ["GET", "M-SEARCH", "PROPFIND", "BREW"])
    async def test_upper_case_methods_pass(self, issuer: TokenIssuer, method: str) -> None:
        """Upper-case methods outside the write segment are read as reads."""
        router = UpperCasingRouter()
        middleware = self.protect(router, issuer)

        sent = await asgi_call(middleware, http_scope("/admin/users", method=method))

        assert 200 == sent[0]["status"]
