# SPDX-License-Identifier: Apache-2.0
"""
Table tests of an orders API policy, in the style of `opa test`.

Run with ``pytest examples/test_policy_table.py``. Each row is a request and the decision it
must get. The cases run through the real decision engine, with tokens signed by a local
`TokenIssuer`, and no server is started.
"""

from __future__ import annotations

import pytest

from zerotrust import Policy, Segment
from zerotrust.testing import PolicyCase, TokenIssuer, assert_decisions
from zerotrust.verifiers import JWTVerifier, NetworkVerifier

AUDIENCE = "orders-api"
ISSUER = TokenIssuer(issuer="https://login.example.test/", algorithms=["RS256"])


def build_policy(issuer: TokenIssuer) -> Policy:
    """The policy under test. In an app this function would live next to the app."""
    # In production the verifier takes jwks_url= of the identity provider; the test trusts the
    # local issuer's keys instead.
    identity = JWTVerifier(
        issuer=issuer.issuer, audience=AUDIENCE, algorithms=["RS256"], keys=issuer.jwks()
    )
    office = NetworkVerifier(allow={"office": ["198.51.100.0/24"]})
    return Policy(
        [
            Segment("health", paths=["/healthz"], public=True),
            Segment(
                "orders",
                paths=["/orders/"],
                verifiers=[identity],
                scopes={"GET": ["orders:read"], "POST": ["orders:write"]},
            ),
            Segment("admin", paths=["/admin/"], verifiers=[identity, office], roles=["admin"]),
        ]
    )


POLICY = build_policy(ISSUER)

CASES = [
    PolicyCase("GET", "/healthz"),
    PolicyCase("GET", "/orders/42", claims={"scope": "orders:read"}),
    PolicyCase("POST", "/orders/", claims={"scope": "orders:read orders:write"}),
    PolicyCase("GET", "/orders/42", expect=401, reason="token_missing"),
    PolicyCase(
        "GET",
        "/orders/42",
        claims={"scope": "orders:read", "exp": 1_000_000_000},
        expect=401,
        reason="token_expired",
    ),
    PolicyCase(
        "POST", "/orders/", claims={"scope": "orders:read"}, expect=403, reason="insufficient_scope"
    ),
    PolicyCase("DELETE", "/orders/42", claims={"scope": "orders:write"}, expect=403),
    PolicyCase("GET", "/orders/..%2Fadmin/users", expect=403, reason="encoded_slash"),
    PolicyCase("GET", "/billing/", expect="deny", reason="no_segment"),
    PolicyCase(
        "GET",
        "/admin/users",
        claims={"sub": "root", "roles": ["admin"]},
        client_ip="198.51.100.20",
        name="admin from the office network",
    ),
    PolicyCase(
        "GET",
        "/admin/users",
        claims={"sub": "root", "roles": ["admin"]},
        client_ip="203.0.113.5",
        expect=403,
        reason="network_not_allowed",
        name="admin from elsewhere",
    ),
    PolicyCase(
        "GET",
        "/admin/users",
        claims={"roles": ["support"]},
        client_ip="198.51.100.20",
        expect=403,
        reason="insufficient_role",
    ),
]


def test_policy_table() -> None:
    """Every case at once: a failure lists each mismatch with its decision trace."""
    assert_decisions(POLICY, CASES, issuer=ISSUER, audience=AUDIENCE)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_policy_case(case: PolicyCase) -> None:
    """The same table, one pytest test per row."""
    assert_decisions(POLICY, [case], issuer=ISSUER, audience=AUDIENCE)
