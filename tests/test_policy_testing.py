# SPDX-License-Identifier: Apache-2.0
"""Policy table tests: `PolicyCase`, `check_policy` and `assert_decisions`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zerotrust import Policy, Segment, ZeroTrustMiddleware
from zerotrust.config import PolicyFileError
from zerotrust.exceptions import ConfigurationError
from zerotrust.testing import (
    PolicyCase,
    TokenIssuer,
    assert_decisions,
    check_policy,
    check_policy_async,
    serve,
)
from zerotrust.verifiers import JWTVerifier, NetworkVerifier

AUDIENCE = "orders-api"


@pytest.fixture(name="policy", scope="module")
def fixture_policy(issuer: TokenIssuer) -> Policy:
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


TABLE = [
    PolicyCase("GET", "/healthz", expect="allow"),
    PolicyCase("GET", "/orders/1", claims={"scope": "orders:read"}, expect="allow"),
    PolicyCase("GET", "/orders/1", expect=401, reason="token_missing"),
    PolicyCase(
        "POST",
        "/orders/",
        claims={"sub": "bob", "scope": "orders:read"},
        expect=403,
        reason="insufficient_scope",
    ),
    PolicyCase(
        "GET", "/orders/1", claims={"aud": "billing"}, expect=401, reason="invalid_audience"
    ),
    PolicyCase("GET", "/orders/%2Fadmin", expect=403, reason="encoded_slash"),
    PolicyCase("GET", "/nowhere", expect="deny", reason="no_segment"),
    PolicyCase(
        "GET",
        "/admin/users",
        claims={"roles": ["admin"]},
        client_ip="198.51.100.7",
        expect="allow",
        name="admin from the office",
    ),
    PolicyCase(
        "GET",
        "/admin/users",
        claims={"roles": ["admin"]},
        client_ip="203.0.113.7",
        expect=403,
        reason="network_not_allowed",
    ),
]


def test_table_passes(policy: Policy, issuer: TokenIssuer) -> None:
    results = assert_decisions(policy, TABLE, issuer=issuer, audience=AUDIENCE)

    assert len(TABLE) == len(results)
    assert all(result.matched for result in results)


@pytest.mark.parametrize("case", TABLE, ids=str)
def test_parametrized_case(policy: Policy, issuer: TokenIssuer, case: PolicyCase) -> None:
    assert_decisions(policy, [case], issuer=issuer, audience=AUDIENCE)


def test_every_mismatch_reported(policy: Policy, issuer: TokenIssuer) -> None:
    wrong = [
        PolicyCase("GET", "/healthz", expect=401),
        PolicyCase("GET", "/orders/1", claims={"scope": "orders:read"}, expect="allow"),
        PolicyCase(
            "DELETE",
            "/orders/1",
            claims={"scope": "orders:read"},
            expect=403,
            reason="insufficient_scope",
        ),
        PolicyCase("GET", "/admin/users", claims={}, expect="allow", name="alice in admin"),
    ]

    with pytest.raises(AssertionError) as caught:
        assert_decisions(policy, wrong, issuer=issuer, audience=AUDIENCE)

    message = str(caught.value)
    assert message.startswith("3 of 4 policy cases failed:")
    assert "GET /healthz -> 401: expected 401, got allow" in message
    assert "expected reason insufficient_scope, got method_not_permitted" in message
    assert "alice in admin: expected allow, got deny (403)" in message
    # The trace names the segment and every verifier's verdict.
    assert "segment: admin (enforce)" in message
    assert "office_network" not in message
    assert "network (context): fail network_not_allowed" in message
    assert "principal: alice" in message
    assert "GET /orders/1 -> allow" not in message


def test_results_carry_decision(policy: Policy, issuer: TokenIssuer) -> None:
    case = PolicyCase("POST", "/orders/", claims={"scope": "orders:read"}, expect="allow")

    (result,) = check_policy(policy, [case], issuer=issuer, audience=AUDIENCE)

    assert not result.matched
    assert ("orders:write",) == result.decision.missing_scopes
    assert "missing scopes: orders:write" in result.trace()


def test_tampered_token(policy: Policy, issuer: TokenIssuer) -> None:
    token = issuer.token("alice", audience=AUDIENCE, scopes=["orders:read"], alg="RS256")
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"

    assert_decisions(
        policy,
        [PolicyCase("GET", "/orders/1", token=tampered, expect=401, reason="invalid_signature")],
    )


def test_middleware_settings_apply(policy: Policy, issuer: TokenIssuer) -> None:
    """A configured middleware decides with its trusted proxies, so X-Forwarded-For counts."""
    middleware = ZeroTrustMiddleware(
        lambda scope, receive, send: None,  # type: ignore[arg-type,return-value]
        policy=policy,
        trusted_proxies=["192.0.2.0/24"],
        events=[],
    )
    forwarded = {"x-forwarded-for": "198.51.100.7"}
    cases = [
        PolicyCase(
            "GET", "/admin/users", claims={"roles": ["admin"]}, headers=forwarded, expect="allow"
        ),
        PolicyCase(
            "GET",
            "/admin/users",
            claims={"roles": ["admin"]},
            headers=forwarded,
            client_ip="203.0.113.1",
            expect=403,
            reason="network_not_allowed",
            name="forwarded header from an untrusted peer",
        ),
    ]

    assert_decisions(middleware, cases, issuer=issuer, audience=AUDIENCE)


async def test_inside_running_loop(policy: Policy, issuer: TokenIssuer) -> None:
    cases = [PolicyCase("GET", "/orders/1", claims={"scope": "orders:read"})]

    synchronous = check_policy(policy, cases, issuer=issuer, audience=AUDIENCE)
    awaited = await check_policy_async(policy, cases, issuer=issuer, audience=AUDIENCE)

    assert [True] == [result.matched for result in synchronous]
    assert [True] == [result.matched for result in awaited]


def test_segment_list_accepted(issuer: TokenIssuer) -> None:
    segments = [Segment("health", paths=["/healthz"], public=True)]

    assert_decisions(segments, [PolicyCase("GET", "/healthz")])


def test_invalid_expectation() -> None:
    with pytest.raises(ConfigurationError, match="expect must be"):
        PolicyCase("GET", "/", expect=200)  # type: ignore[arg-type]


def test_reason_with_allow_rejected() -> None:
    with pytest.raises(ConfigurationError, match="expects allow"):
        PolicyCase("GET", "/", expect="allow", reason="no_segment")


def test_claims_and_token_exclusive() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        PolicyCase("GET", "/", claims={}, token="abc")


def test_relative_path_rejected() -> None:
    with pytest.raises(ConfigurationError, match="starting with '/'"):
        PolicyCase("GET", "orders")


def test_claims_need_issuer(policy: Policy) -> None:
    with pytest.raises(ConfigurationError, match="no issuer was given"):
        check_policy(policy, [PolicyCase("GET", "/orders/1", claims={})])


def test_unknown_policy_type() -> None:
    with pytest.raises(ConfigurationError, match="policy must be"):
        check_policy(42, [PolicyCase("GET", "/")])


def test_default_name() -> None:
    assert "POST /orders/ -> 403" == str(PolicyCase("POST", "/orders/", expect=403))


def test_policy_file_path(tmp_path: Path, issuer: TokenIssuer) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'version = 1\n\n[[segments]]\nname = "health"\npaths = ["/healthz"]\npublic = true\n',
        encoding="utf-8",
    )

    assert_decisions(
        path,
        [PolicyCase("GET", "/healthz"), PolicyCase("GET", "/api/", expect=403)],
    )
    assert_decisions(str(path), [PolicyCase("GET", "/healthz")])


def test_example_table_runs() -> None:
    """The shipped example table passes under the project's pytest settings."""
    example = Path(__file__).resolve().parent.parent / "examples" / "test_policy_table.py"
    completed = subprocess.run(  # noqa: S603 -- the interpreter running this test
        [sys.executable, "-m", "pytest", str(example), "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=example.parent.parent,
    )

    assert 0 == completed.returncode, completed.stdout + completed.stderr
    assert "13 passed" in completed.stdout


def test_policy_file_settings_apply(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "version = 1\n\n[middleware]\ntrusted_proxies = ['192.0.2.0/24']\n\n"
        "[verifiers.office]\ntype = 'network'\nallow = { office = ['198.51.100.0/24'] }\n\n"
        "[[segments]]\nname = 'office'\npaths = ['/office/']\npublic = true\n"
        "verifiers = ['office']\n",
        encoding="utf-8",
    )
    forwarded = {"x-forwarded-for": "198.51.100.9"}

    assert_decisions(
        path,
        [
            PolicyCase("GET", "/office/", headers=forwarded),
            PolicyCase("GET", "/office/", expect=403, reason="network_not_allowed"),
        ],
    )


DOC = Path(__file__).resolve().parent.parent / "docs" / "policy-testing.md"


def doc_recipe() -> tuple[str, str]:
    """Return the policy file and the test module of the recipe in docs/policy-testing.md."""
    section = DOC.read_text().split("## Testing a policy file as written", 1)[1]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    return toml, python


FILE_CASES = [
    PolicyCase("GET", "/healthz"),
    PolicyCase("GET", "/orders/42", claims={"scope": "orders:read"}),
    PolicyCase("POST", "/orders/", claims={"scope": "orders:read"}, expect=403),
    PolicyCase("GET", "/orders/42", expect=401, reason="token_missing"),
]


def test_policy_file_environ(tmp_path: Path) -> None:
    """environ fills the file's references, so its jwks_url is fetched from a served JWKS."""
    toml, _ = doc_recipe()
    path = tmp_path / "policy.toml"
    path.write_text(toml)
    issuer = TokenIssuer(issuer="https://login.example.test/")

    with serve(issuer.jwks_app()) as base_url:
        environ = {"ISSUER": issuer.issuer, "JWKS_URL": f"{base_url}/.well-known/jwks.json"}
        results = assert_decisions(
            path, FILE_CASES, issuer=issuer, audience="orders-api", environ=environ
        )

    assert 4 == len(results)
    assert "identity" == results[1].decision.verdicts[0].name


def test_environ_reference_missing(tmp_path: Path) -> None:
    """A reference that environ lacks, with no default, fails as it would in the middleware."""
    path = tmp_path / "policy.toml"
    path.write_text(
        '[[segments]]\nname = "a"\npaths = ["/a"]\nverifiers = [{ type = "network", '
        'allow = ["10.0.0.0/8"], name = { env = "ZT_TEST_NAME" } }]\n'
    )
    case = PolicyCase("GET", "/a", client_ip="10.1.2.3", expect=401)

    with pytest.raises(PolicyFileError, match="'ZT_TEST_NAME' is not set"):
        check_policy(path, [case], environ={})
    [result] = check_policy(path, [case], environ={"ZT_TEST_NAME": "office"})

    assert result.matched
    assert "office" == result.decision.verdicts[0].name


def test_environ_needs_path(policy: Policy) -> None:
    """environ with a policy that is not a file path is a configuration error."""
    with pytest.raises(ConfigurationError, match="environ is only read when loading a policy"):
        check_policy(policy, [PolicyCase("GET", "/healthz")], environ={"A": "b"})


def test_doc_recipe_runs(tmp_path: Path) -> None:
    """The recipe of docs/policy-testing.md passes as written, with pytest."""
    toml, python = doc_recipe()
    (tmp_path / "policy.toml").write_text(toml)
    (tmp_path / "test_policy_file_recipe.py").write_text(python)

    completed = subprocess.run(  # noqa: S603 -- the interpreter running this test
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert 0 == completed.returncode, completed.stdout + completed.stderr
    assert "1 passed" in completed.stdout
