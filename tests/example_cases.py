# SPDX-License-Identifier: Apache-2.0
"""The requests every example app is tested with, whatever its framework and server."""

from __future__ import annotations

import httpx

from zerotrust.testing import TokenIssuer

AUDIENCE = "inventory-api"


def token_for(issuer: TokenIssuer, *scopes: str) -> dict[str, str]:
    """Return an Authorization header with alice's token for the examples' audience."""
    token = issuer.token("alice", audience=AUDIENCE, scopes=scopes)
    return {"authorization": f"Bearer {token}"}


class ExampleCases:
    """
    Tests shared by the example apps. A test module subclasses this in a ``Test`` class and
    provides the ``client`` fixture for the app it serves.
    """

    def test_allowed_with_scope(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """A token with items:read lists the items, and the app reads the subject."""
        response = client.get("/items", headers=token_for(issuer, "items:read"))

        assert 200 == response.status_code
        assert "alice" == response.json()["viewer"]

    def test_create_with_scope(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """A token with items:write creates an item owned by the subject."""
        response = client.post(
            "/items", headers=token_for(issuer, "items:write"), json={"name": "monitor"}
        )

        assert 201 == response.status_code
        assert {"name": "monitor", "owner": "alice"} == response.json()

    def test_no_token_401(self, client: httpx.Client) -> None:
        """A request without a token is rejected with a Bearer challenge."""
        response = client.get("/items")

        assert 401 == response.status_code
        assert response.headers["www-authenticate"].startswith("Bearer ")
        assert "unauthorized" == response.json()["error"]

    def test_wrong_audience_401(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """A token minted for another API is rejected."""
        token = issuer.token("alice", audience="billing-api", scopes=["items:read"])

        response = client.get("/items", headers={"authorization": f"Bearer {token}"})

        assert 401 == response.status_code

    def test_missing_scope_403(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """A token without items:write cannot create an item."""
        response = client.post(
            "/items", headers=token_for(issuer, "items:read"), json={"name": "monitor"}
        )

        assert 403 == response.status_code
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
        assert 'scope="items:write"' in response.headers["www-authenticate"]
        assert "forbidden" == response.json()["error"]

    def test_unlisted_method_403(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """A method the segment does not list is denied even with every scope."""
        response = client.delete("/items", headers=token_for(issuer, "items:read", "items:write"))

        assert 403 == response.status_code

    def test_health_public(self, client: httpx.Client) -> None:
        """The health check needs no token."""
        response = client.get("/healthz")

        assert 200 == response.status_code
        assert {"status": "ok"} == response.json()

    def test_unknown_path_403(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """A path outside every segment is denied before the framework routes it."""
        response = client.get("/admin", headers=token_for(issuer, "items:read"))

        assert 403 == response.status_code
