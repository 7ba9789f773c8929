# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from zerotrust import (
    ConfigurationError,
    JWTVerifier,
    MemorySink,
    Policy,
    Segment,
    ZeroTrustMiddleware,
)
from zerotrust.testing import TokenIssuer, capture_events


@pytest.fixture(name="app")
def fixture_app(issuer: TokenIssuer) -> ZeroTrustMiddleware:
    """An app whose /payments/ segment needs MFA within the last five minutes."""
    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["ES256"], keys=issuer.jwks()
    )

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/payments/send", ok), Route("/api/items", ok)])
    policy = Policy(
        [
            Segment("api", paths=["/api/"], verifiers=[identity]),
            Segment(
                "payments",
                paths=["/payments/"],
                verifiers=[identity],
                max_auth_age=300,
                acr_values=["phr", "phrh"],
                amr=["mfa"],
            ),
        ]
    )
    return ZeroTrustMiddleware(inner, policy=policy, events=MemorySink())


async def get(app: ZeroTrustMiddleware, path: str, token: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
        return await client.get(path, headers={"authorization": f"Bearer {token}"})


class TestStepUp:
    async def test_fresh_strong_login_allowed(
        self, app: ZeroTrustMiddleware, issuer: TokenIssuer
    ) -> None:
        """A recent login with an accepted acr and MFA reaches the segment."""
        token = issuer.token(
            alg="ES256", auth_time=int(time.time()) - 60, acr="phr", amr=["pwd", "mfa"]
        )

        response = await get(app, "/payments/send", token)

        assert 200 == response.status_code

    @pytest.mark.parametrize(
        ("claims", "reasons"),
        [
            ({"auth_time": -3600, "acr": "phr", "amr": ["mfa"]}, ["authentication_too_old"]),
            ({"acr": "phr", "amr": ["mfa"]}, ["authentication_too_old"]),
            ({"auth_time": -60, "acr": "pwd", "amr": ["mfa"]}, ["acr_not_satisfied"]),
            ({"auth_time": -60, "amr": ["mfa"]}, ["acr_not_satisfied"]),
            ({"auth_time": -60, "acr": "phr", "amr": ["pwd"]}, ["amr_not_satisfied"]),
            ({"auth_time": -60, "acr": "phr", "amr": "mfa"}, ["amr_not_satisfied"]),
            ({"auth_time": "yesterday", "acr": "phr", "amr": ["mfa"]}, ["authentication_too_old"]),
            ({"auth_time": 3600, "acr": "phr", "amr": ["mfa"]}, ["auth_time_in_future"]),
            ({"auth_time": 10**8, "acr": "phr", "amr": ["mfa"]}, ["auth_time_in_future"]),
            (
                {"auth_time": -3600, "acr": 7, "amr": [1]},
                ["authentication_too_old", "acr_not_satisfied", "amr_not_satisfied"],
            ),
        ],
    )
    async def test_step_up_required(
        self,
        app: ZeroTrustMiddleware,
        issuer: TokenIssuer,
        claims: dict[str, Any],
        reasons: list[str],
    ) -> None:
        """An old or weak login gets 401 insufficient_user_authentication and the requirements."""
        if isinstance(claims.get("auth_time"), int):
            claims["auth_time"] = int(time.time()) + claims["auth_time"]
        token = issuer.token(alg="ES256", **claims)

        with capture_events() as events:
            response = await get(app, "/payments/send", token)

        assert 401 == response.status_code
        expected = (
            'Bearer realm="zerotrust", error="insufficient_user_authentication", '
            'acr_values="phr phrh", max_age="300"'
        )
        assert expected == response.headers["www-authenticate"]
        assert reasons == events[0]["reasons"]
        assert "alice" == events[0]["subject"]

    async def test_other_segments_unaffected(
        self, app: ZeroTrustMiddleware, issuer: TokenIssuer
    ) -> None:
        """A segment without step-up requirements accepts an old, single-factor login."""
        token = issuer.token(alg="ES256", auth_time=0, amr=["pwd"])

        response = await get(app, "/api/items", token)

        assert 200 == response.status_code


class TestStepUpConfiguration:
    @pytest.mark.parametrize("age", [0, -5, float("inf"), "300", True])
    def test_invalid_max_auth_age(self, age: object) -> None:
        """max_auth_age must be a positive, finite number of seconds."""
        with pytest.raises(ConfigurationError, match="max_auth_age"):
            Segment("s", paths=["/s/"], public=False, verifiers=[_identity()], max_auth_age=age)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "options", [{"max_auth_age": 60}, {"acr_values": ["phr"]}, {"amr": ["mfa"]}]
    )
    def test_public_segment_rejects_step_up(self, options: dict[str, Any]) -> None:
        """A public segment has no user to step up."""
        with pytest.raises(ConfigurationError, match="public"):
            Segment("s", paths=["/s/"], public=True, **options)

    def test_empty_acr_value(self) -> None:
        """Each acr value is a non-empty string."""
        with pytest.raises(ConfigurationError, match="acr_values"):
            Segment("s", paths=["/s/"], verifiers=[_identity()], acr_values=[""])


def _identity() -> JWTVerifier:
    issuer = TokenIssuer(algorithms=("ES256",))
    return JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["ES256"], keys=issuer.jwks()
    )
