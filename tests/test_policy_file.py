# SPDX-License-Identifier: Apache-2.0
"""Tests of TOML policy files: loading, equivalence with the Python API, and validation."""

from __future__ import annotations

import ipaddress
import json
import string
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from zerotrust import (
    AccessRequest,
    Engine,
    InsecureConfigurationWarning,
    JWTVerifier,
    MemorySink,
    NetworkVerifier,
    Policy,
    Segment,
    ZeroTrustMiddleware,
)
from zerotrust.config import LoadedPolicy, PolicyFileError, load_policy
from zerotrust.events import EventEmitter, JsonLinesSink
from zerotrust.exceptions import ConfigurationError
from zerotrust.testing import TokenIssuer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.toml"

POLICY = """\
version = 1

[middleware]
trusted_proxies = ["10.0.0.0/8"]

[verifiers.identity]
type = "jwt"
issuer = "{issuer}"
audience = "api"
algorithms = ["RS256", "ES256"]
keys = {{ file = "keys/jwks.json" }}

[verifiers.office]
type = "network"
allow = {{ office = ["192.0.2.0/24"] }}

[[segments]]
name = "health"
paths = ["/healthz"]
public = true

[[segments]]
name = "api"
paths = ["/api/"]
verifiers = ["identity"]
scopes = {{ GET = ["orders:read"], POST = ["orders:write"] }}

[[segments]]
name = "admin"
paths = ["/admin/"]
verifiers = ["identity", "office"]
roles = ["admin"]
"""


def write_policy(directory: Path, issuer: TokenIssuer, text: str = POLICY) -> Path:
    """Write a policy file and the JWKS it references into ``directory``."""
    (directory / "keys").mkdir(exist_ok=True)
    (directory / "keys" / "jwks.json").write_text(json.dumps(issuer.jwks()))
    path = directory / "policy.toml"
    path.write_text(text.format(issuer=issuer.issuer))
    return path


def python_policy(issuer: TokenIssuer) -> Policy:
    """The policy of `POLICY`, built with the Python API."""
    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["RS256", "ES256"], keys=issuer.jwks()
    )
    office = NetworkVerifier(allow={"office": ["192.0.2.0/24"]})
    return Policy(
        [
            Segment("health", paths=["/healthz"], public=True),
            Segment(
                "api",
                paths=["/api/"],
                verifiers=[identity],
                scopes={"GET": ["orders:read"], "POST": ["orders:write"]},
            ),
            Segment("admin", paths=["/admin/"], verifiers=[identity, office], roles=["admin"]),
        ]
    )


def access_request(
    method: str, path: str, token: str | None = None, client_ip: str = "192.0.2.7"
) -> AccessRequest:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    address = ipaddress.ip_address(client_ip)
    return AccessRequest(
        method=method,
        path=path,
        raw_path=path,
        host="api.example.com",
        headers=Headers(headers),
        client_ip=address,
        peer_ip=address,
        request_id="r1",
        time=time.time(),
    )


def problems_of(path: Path, **options: Any) -> list[str]:
    """Load ``path`` and return its problems as text; fail if it loads."""
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path, **options)
    return [str(problem) for problem in caught.value.problems]


def load_text(tmp_path: Path, text: str, **options: Any) -> LoadedPolicy:
    path = tmp_path / "policy.toml"
    path.write_text(textwrap.dedent(text))
    return load_policy(path, **options)


def text_problems(tmp_path: Path, text: str, **options: Any) -> list[str]:
    path = tmp_path / "policy.toml"
    path.write_text(textwrap.dedent(text))
    return problems_of(path, **options)


MINIMAL_SEGMENT = """
[[segments]]
name = "health"
paths = ["/healthz"]
public = true
"""


class TestLoadPolicy:
    async def test_file_and_python_decide_alike(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """The file and the Python API give equal decisions on the same requests."""
        loaded = load_policy(write_policy(tmp_path, issuer), build_sinks=False)
        from_file = Engine(loaded.policy)
        from_python = Engine(python_policy(issuer))
        reader = issuer.token(scopes=["orders:read"])
        admin = issuer.token(roles=["admin"])
        cases = [
            ("GET", "/healthz", None, "192.0.2.7"),
            ("GET", "/api/orders", reader, "192.0.2.7"),
            ("POST", "/api/orders", reader, "192.0.2.7"),
            ("DELETE", "/api/orders", reader, "192.0.2.7"),
            ("GET", "/api/orders", None, "192.0.2.7"),
            ("GET", "/admin/users", admin, "192.0.2.7"),
            ("GET", "/admin/users", admin, "198.51.100.1"),
            ("GET", "/admin/users", reader, "192.0.2.7"),
            ("GET", "/elsewhere", admin, "192.0.2.7"),
        ]

        for method, path, token, client_ip in cases:
            request = access_request(method, path, token, client_ip)
            expected = await from_python.decide(request)
            actual = await from_file.decide(request)
            case = (method, path, client_ip)
            assert (expected.allowed, case) == (actual.allowed, case)
            assert (expected.status, case) == (actual.status, case)
            assert (expected.reasons, case) == (actual.reasons, case)
            expected_segment = expected.segment.name if expected.segment else None
            actual_segment = actual.segment.name if actual.segment else None
            assert (expected_segment, case) == (actual_segment, case)

    def test_settings_and_identity(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """The loaded policy carries the middleware settings, the file's hash and its verifiers."""
        path = write_policy(tmp_path, issuer)
        loaded = load_policy(path, build_sinks=False)

        assert path == loaded.path
        assert 64 == len(loaded.sha256)
        assert ipaddress.ip_address("10.1.2.3") in loaded.trusted_proxies
        assert "x-forwarded-for" == loaded.forwarded_header
        assert "reject" == loaded.path_normalization
        assert ["identity", "office"] == sorted(loaded.verifiers)
        api, admin = loaded.policy.segments[1], loaded.policy.segments[2]
        assert api.verifiers[0] is admin.verifiers[0]
        assert loaded.verifiers["identity"] is api.verifiers[0]
        options = loaded.middleware_options()
        assert loaded.policy is options["policy"]
        assert loaded.events is options["events"]

    async def test_middleware_from_policy_file(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """ZeroTrustMiddleware.from_policy_file protects an app, and overrides win."""

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        sink = MemorySink()
        middleware = ZeroTrustMiddleware.from_policy_file(
            app, write_policy(tmp_path, issuer), events=EventEmitter([sink])
        )
        transport = httpx.ASGITransport(app=middleware, client=("192.0.2.7", 1234))
        token = issuer.token(scopes=["orders:read"])
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            allowed = await client.get("/api/orders", headers={"authorization": f"Bearer {token}"})
            denied = await client.get("/api/orders")
        middleware.events.flush()

        assert 200 == allowed.status_code
        assert 401 == denied.status_code
        assert [200, 401] == [event["status"] for event in sink.events]

    def test_wsgi_middleware_from_policy_file(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """ZeroTrustWSGIMiddleware.from_policy_file protects a WSGI app."""
        from zerotrust.wsgi import ZeroTrustWSGIMiddleware

        def app(environ: Any, start_response: Any) -> list[bytes]:
            start_response("200 OK", [("content-type", "text/plain")])
            return [b"ok"]

        middleware = ZeroTrustWSGIMiddleware.from_policy_file(
            app, write_policy(tmp_path, issuer), events=EventEmitter([MemorySink()])
        )
        statuses = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            statuses.append(status)

        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/healthz",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "192.0.2.7",
            "HTTP_HOST": "127.0.0.1",
            "wsgi.url_scheme": "http",
        }
        body = b"".join(middleware(dict(environ), start_response))
        denied = dict(environ, PATH_INFO="/api/orders")
        b"".join(middleware(denied, start_response))
        middleware.close()

        assert b"ok" == body
        assert ["200 OK", "401 Unauthorized"] == statuses

    def test_example_policy_loads(self) -> None:
        """examples/policy.toml expresses the demo's segments with shared verifiers."""
        issuer = TokenIssuer()
        keys = json.dumps(issuer.jwks())
        environ = {
            "ZT_DEMO_ISSUER": issuer.issuer,
            "ZT_DEMO_JWKS_URL": "http://127.0.0.1:8/.well-known/jwks.json",
            "ZT_DEMO_DEVICE_ISSUER": "https://devices.example.com",
            "ZT_DEMO_DEVICE_KEYS": keys,
            "ZT_DEMO_GRANT_KEYS": json.dumps({"keys": [issuer.jwks()["keys"][1]]}),
        }
        loaded = load_policy(EXAMPLE, environ=environ, build_sinks=False)

        names = [segment.name for segment in loaded.policy.segments]
        assert ["public", "api", "admin", "workspace", "internal"] == names
        assert loaded.monitor is not None
        assert loaded.monitor.signals is loaded.signals
        assert loaded.verifiers["risk"].signals is loaded.signals  # type: ignore[attr-defined]
        assert loaded.verifiers["grants"].events is loaded.events  # type: ignore[attr-defined]
        assert loaded.monitor.emitter is loaded.events
        assert [loaded.monitor] == list(loaded.events.sinks)

    def test_sinks_built_relative_to_file(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """A relative sink path resolves against the policy's directory; it is opened when built."""
        text = (
            MINIMAL_SEGMENT
            + '[[events.sinks]]\ntype = "jsonl"\ntarget = "logs.jsonl"\nformat = "ecs"\n'
        )
        (tmp_path / "policy.toml").write_text(text)

        load_policy(tmp_path / "policy.toml", build_sinks=False)
        assert not (tmp_path / "logs.jsonl").exists()
        loaded = load_policy(tmp_path / "policy.toml")
        loaded.events.close()
        assert (tmp_path / "logs.jsonl").exists()
        assert isinstance(loaded.events.sinks[0], JsonLinesSink)

    def test_secret_from_environment(self, tmp_path: Path) -> None:
        """An HMAC secret comes from an environment variable."""
        text = (
            MINIMAL_SEGMENT
            + """
            [verifiers.hmac]
            type = "jwt"
            issuer = "https://login.example.com/"
            audience = "api"
            algorithms = ["HS256"]
            keys = { env = "ZT_TEST_HMAC" }
        """
        )
        loaded = load_text(tmp_path, text, environ={"ZT_TEST_HMAC": "k" * 40}, build_sinks=False)
        assert "hmac" == loaded.verifiers["hmac"].name

    def test_custom_verifier_by_import_path(self, tmp_path: Path) -> None:
        """A verifier class named by import path gets the table's keyword options."""
        text = """
            [[segments]]
            name = "api"
            paths = ["/api/"]
            verifiers = [
                { type = "zerotrust.testing:StaticVerifier", subject = "svc", name = "fixed" },
            ]
        """
        loaded = load_text(tmp_path, text, build_sinks=False)
        verifier = loaded.policy.segments[0].verifiers[0]
        assert "fixed" == verifier.name

    def test_monitor_warning_has_key_path(self, tmp_path: Path) -> None:
        """A constructor's warning is emitted again with the line and key path of its setting."""
        text = MINIMAL_SEGMENT.replace("public = true", 'public = true\nmode = "monitor"')
        line = text.splitlines().index('mode = "monitor"') + 1
        pattern = rf"policy.toml:{line}: segments\[0\]\.mode: segment 'health' is in monitor"
        with pytest.warns(InsecureConfigurationWarning, match=pattern):
            load_text(tmp_path, text, build_sinks=False)


class TestValidation:
    def test_unknown_key_suggests(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """A misspelt key names the file, line and key path, and suggests the right key."""
        path = write_policy(
            tmp_path, issuer, POLICY.replace('audience = "api"', 'audiance = "api"')
        )
        problems = problems_of(path)

        assert any("policy.toml:9: verifiers.identity.audiance" in problem for problem in problems)
        assert any("did you mean 'audience'?" in problem for problem in problems)
        assert any("missing required key 'audience'" in problem for problem in problems)

    def test_constructor_error_gets_key_path(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """A ConfigurationError of a constructor is reported at the key it is about."""
        text = POLICY.replace(
            'algorithms = ["RS256", "ES256"]', 'algorithms = ["RS256"]\nleeway = 400'
        )
        problems = problems_of(write_policy(tmp_path, issuer, text))

        assert 1 == len(problems)
        assert "policy.toml:11: verifiers.identity.leeway: leeway must be between 0" in problems[0]

    def test_inline_verifier_key_path(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """A problem inside an inline verifier of a segment names the segment and position."""
        text = POLICY.replace(
            'verifiers = ["identity", "office"]',
            'verifiers = ["identity", {{ type = "network", allow = ["10.0.0.1/8"] }}]',
        )
        problems = problems_of(write_policy(tmp_path, issuer, text))

        assert 1 == len(problems)
        assert "segments[2].verifiers[1].allow" in problems[0]
        assert ":31:" in problems[0]

    def test_wrong_type_and_choice(self, tmp_path: Path) -> None:
        """A value of the wrong type, and a misspelt choice, are both reported."""
        text = (
            MINIMAL_SEGMENT
            + """
            [[segments]]
            name = "api"
            paths = "/api/"
            mode = "monitr"
            verifiers = [{ type = "network", allow = ["10.0.0.0/8"], strict = "yes" }]
        """
        )
        problems = text_problems(tmp_path, text)

        assert any("segments[1].mode" in p and "did you mean 'monitor'?" in p for p in problems)
        assert any("strict must be true or false, not 'yes'" in p for p in problems)

    @pytest.mark.parametrize(
        ("table", "key"),
        [
            (
                'type = "jwt"\nissuer = "i"\naudience = "a"\nalgorithms = ["HS256"]\nkeys = "'
                + "s" * 40
                + '"',
                "keys",
            ),
            (
                'type = "jwt"\nissuer = "i"\naudience = "a"\nalgorithms = ["HS256"]\n'
                'keys = { kty = "oct", k = "c2VjcmV0" }',
                "keys",
            ),
        ],
    )
    def test_inline_secret_rejected(self, tmp_path: Path, table: str, key: str) -> None:
        """An HMAC secret written into the file is rejected with a pointer to env or file."""
        problems = text_problems(tmp_path, MINIMAL_SEGMENT + "[verifiers.hmac]\n" + table + "\n")

        assert 1 == len(problems)
        assert f"verifiers.hmac.{key}" in problems[0]
        assert "must not be written in the policy file" in problems[0]

    @pytest.mark.parametrize(
        "sink",
        [
            'type = "postgres"\ndsn = "postgresql://app:hunter2@127.0.0.1/test"',
            'type = "splunk_hec"\nurl = "https://127.0.0.1:8088"\ntoken = "abc"',
            'type = "webhook"\nurl = "https://127.0.0.1:9000"\n'
            'headers = { Authorization = "Bearer abc" }',
            'type = "elasticsearch"\nurl = "https://127.0.0.1:9200"\n'
            'basic_auth = { username = "u", password = "p" }',
        ],
    )
    def test_inline_sink_secret_rejected(self, tmp_path: Path, sink: str) -> None:
        """Credentials of sinks must come from env or file, even when sinks are not built."""
        text = MINIMAL_SEGMENT + "[[events.sinks]]\n" + sink + "\n"
        problems = text_problems(tmp_path, text, build_sinks=False)

        assert 1 == len(problems)
        assert "events.sinks[0]." in problems[0]
        assert "must not be written in the policy file" in problems[0]

    def test_missing_environment_variable(self, tmp_path: Path) -> None:
        """A reference to an unset variable names that variable."""
        text = (
            MINIMAL_SEGMENT
            + """
            [[events.sinks]]
            type = "splunk_hec"
            url = "https://127.0.0.1:8088"
            token = { env = "ZT_TEST_UNSET_TOKEN" }
        """
        )
        problems = text_problems(tmp_path, text, environ={})

        assert 1 == len(problems)
        assert "'ZT_TEST_UNSET_TOKEN' is not set" in problems[0]

    def test_environment_default(self, tmp_path: Path) -> None:
        """A value that is not secret falls back to its default when the variable is unset."""
        text = (
            MINIMAL_SEGMENT
            + """
            [verifiers.remote]
            type = "jwt"
            issuer = { env = "ZT_TEST_ISSUER", default = "https://login.example.com/" }
            audience = "api"
            algorithms = ["RS256"]
            jwks_url = "https://login.example.com/jwks.json"
        """
        )
        unset = load_text(tmp_path, text, environ={}, build_sinks=False)
        chosen = {"ZT_TEST_ISSUER": "https://other.example.com/"}
        overridden = load_text(tmp_path, text, environ=chosen, build_sinks=False)

        assert "https://login.example.com/" == unset.verifiers["remote"].issuer
        assert "https://other.example.com/" == overridden.verifiers["remote"].issuer

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("keys", '{ env = "ZT_TEST_HMAC", default = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk" }'),
            ("issuer", '{ env = "ZT_TEST_ISSUER", default = 7 }'),
        ],
        ids=["secret-default", "default-not-text"],
    )
    def test_bad_environment_default(self, tmp_path: Path, option: str, value: str) -> None:
        """A secret takes no default from the file, and a default must be text."""
        options = {
            "issuer": '"https://login.example.com/"',
            "keys": '{ env = "ZT_TEST_HMAC" }',
            option: value,
        }
        text = MINIMAL_SEGMENT + (
            '\n[verifiers.hmac]\ntype = "jwt"\naudience = "api"\n'
            'algorithms = ["HS256"]\n'
            + "".join(f"{key} = {text}\n" for key, text in options.items())
        )
        environ = {"ZT_TEST_HMAC": "k" * 40}
        problems = text_problems(tmp_path, text, environ=environ, build_sinks=False)

        assert 1 == len(problems)
        assert f"verifiers.hmac.{option}" in problems[0]

    def test_unknown_verifier_reference(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """A segment naming an undeclared verifier gets a suggestion."""
        text = POLICY.replace('verifiers = ["identity"]', 'verifiers = ["identty"]')
        problems = problems_of(write_policy(tmp_path, issuer, text))

        assert 1 == len(problems)
        assert "segments[1].verifiers[0]: no verifier named 'identty'" in problems[0]
        assert "did you mean 'identity'?" in problems[0]

    def test_unknown_type(self, tmp_path: Path) -> None:
        """An unknown verifier type lists the valid ones."""
        problems = text_problems(tmp_path, MINIMAL_SEGMENT + '[verifiers.x]\ntype = "netwrk"\n')

        assert 1 == len(problems)
        assert "verifiers.x.type: unknown type 'netwrk'; did you mean 'network'?" in problems[0]

    def test_invalid_toml_has_line(self, tmp_path: Path) -> None:
        """A syntax error names the line tomllib reports."""
        problems = text_problems(tmp_path, MINIMAL_SEGMENT + "[verifiers\n")

        assert 1 == len(problems)
        assert "policy.toml:6:" in problems[0]
        assert "not valid TOML" in problems[0]

    def test_every_problem_reported(self, tmp_path: Path) -> None:
        """Independent problems are all reported at once, in file order."""
        text = """
            versoin = 1
            [middleware]
            trusted_proxies = ["10.0.0.1/8"]
            path_normalization = "rewrit"
            [[segments]]
            name = "api"
            paths = ["/api/"]
        """
        problems = text_problems(tmp_path, text)

        assert 4 == len(problems)
        assert "did you mean 'version'?" in problems[0]
        assert "middleware.trusted_proxies" in problems[1]
        assert "did you mean 'rewrite'?" in problems[2]
        assert "policy.toml:6: segments[0]: segment 'api' is not public" in problems[3]

    def test_unreadable_file(self, tmp_path: Path) -> None:
        """A missing policy file is a PolicyFileError, which is a ConfigurationError."""
        problems = problems_of(tmp_path / "absent.toml")

        assert 1 == len(problems)
        assert "cannot read" in problems[0]


_KEY_NAMES = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=20)
_VALUES = st.one_of(
    st.integers(-10, 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(alphabet=string.printable, max_size=20),
    st.lists(st.text(alphabet=string.ascii_letters + "/*.", max_size=10), max_size=3),
)
_PLACES = {
    "top": ((), ""),
    "middleware": (("middleware",), "middleware."),
    "segment": (("segments", 0), "segments[0]."),
    "verifier": (("verifiers", "net"), "verifiers.net."),
}
_KNOWN = {
    "top": {"version", "middleware", "verifiers", "detectors", "monitor", "events", "segments"},
    "middleware": {"trusted_proxies", "forwarded_header", "path_normalization", "realm"},
    "segment": set(Segment.__init__.__code__.co_varnames),
    "verifier": {"type", "allow", "deny", "strict", "name", "timeout", "required"},
}


def _document() -> dict[str, Any]:
    return {
        "middleware": {"trusted_proxies": []},
        "verifiers": {"net": {"type": "network", "allow": ["10.0.0.0/8"]}},
        "segments": [{"name": "api", "paths": ["/api/"], "verifiers": ["net"]}],
    }


def _to_toml(document: dict[str, Any]) -> str:
    """Write the small documents of these tests as TOML (tables, arrays of tables, scalars)."""
    lines: list[str] = []
    for key, value in document.items():
        tables = isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
        if not isinstance(value, dict) and not tables:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in document.items():
        if key == "verifiers" and isinstance(value, dict):
            for name, table in value.items():
                lines.append(f"[verifiers.{name}]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
        elif isinstance(value, dict):
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in value.items())
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for table in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def _place(document: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    target: Any = document
    for part in path:
        target = target[part]
    return target  # type: ignore[no-any-return]


class TestProperties:
    @given(place=st.sampled_from(sorted(_PLACES)), key=_KEY_NAMES, value=_VALUES)
    def test_unknown_keys_rejected(
        self, tmp_path_factory: Any, place: str, key: str, value: Any
    ) -> None:
        """A key that is not an option is always a problem with its key path."""
        if key in _KNOWN[place]:
            return
        document = _document()
        path, prefix = _PLACES[place]
        _place(document, path)[key] = value
        directory = tmp_path_factory.mktemp("policy")
        (directory / "policy.toml").write_text(_to_toml(document))

        with pytest.raises(PolicyFileError) as caught:
            load_policy(directory / "policy.toml", build_sinks=False)

        rendered = [problem.key_path for problem in caught.value.problems]
        assert f"{prefix}{key}" in rendered

    @given(
        place=st.sampled_from(["middleware", "segment", "verifier"]),
        key=st.sampled_from(
            [
                "trusted_proxies",
                "realm",
                "paths",
                "methods",
                "hosts",
                "scopes",
                "roles",
                "public",
                "mode",
                "max_auth_age",
                "allow",
                "deny",
                "strict",
                "timeout",
                "required",
                "name",
            ]
        ),
        value=_VALUES,
    )
    def test_bad_values_raise_configuration_errors(
        self, tmp_path_factory: Any, place: str, key: str, value: Any
    ) -> None:
        """Any value of a known key either loads or raises PolicyFileError, nothing else."""
        document = _document()
        path, _prefix = _PLACES[place]
        _place(document, path)[key] = value
        directory = tmp_path_factory.mktemp("policy")
        (directory / "policy.toml").write_text(_to_toml(document))

        problems: tuple[object, ...] = ("loaded",)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_policy(directory / "policy.toml", build_sinks=False)
        except PolicyFileError as error:
            problems = error.problems
        assert problems


# Shared state ---------------------------------------------------------------------------------

DEPLOYMENT_DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"

MEMORY_STATE = """
[state]
type = "memory"

[monitor]
detectors = ["denied_burst"]

[verifiers.grants]
type = "grant"
keys = { file = "grant-jwks.json" }
store = { type = "state", retention = 600 }
single_use = true

[verifiers.risk]
type = "risk"

[[segments]]
name = "ops"
paths = ["/ops/"]
verifiers = [{ type = "network", allow = ["127.0.0.0/8"] }, "grants", "risk"]
"""


def deployment_policy() -> str:
    """Return the complete policy file of docs/deployment.md."""
    text = DEPLOYMENT_DOC.read_text()
    section = text.split("### As a policy file", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class TestStateTable:
    def test_memory_state_shared(self, tmp_path: Path) -> None:
        """With [state], the monitor, signals, grant store and single-use marks share its store."""
        (tmp_path / "grant-jwks.json").write_text(json.dumps(TokenIssuer().jwks()))

        loaded = load_text(tmp_path, MEMORY_STATE, build_sinks=False)
        grants = loaded.verifiers["grants"]

        assert loaded.state is not None
        assert "MemoryStateStore" == type(loaded.state).__name__
        assert loaded.state is loaded.monitor.store if loaded.monitor else False
        assert loaded.state is loaded.signals.store
        assert loaded.state is grants.store.state
        assert 600 == grants.store.retention
        assert loaded.state is grants.single_use

    def test_no_state_table(self, tmp_path: Path) -> None:
        """Without [state] the monitor and signals keep their own state, as before."""
        loaded = load_text(tmp_path, MINIMAL_SEGMENT + "\n[monitor]\n", build_sinks=False)

        assert loaded.state is None
        assert loaded.monitor is not None
        assert loaded.monitor.store is None
        assert "MemoryStateStore" == type(loaded.signals.store).__name__

    def test_state_needed(self, tmp_path: Path) -> None:
        """A part that keeps its state in [state] is an error in a file without one."""
        (tmp_path / "grant-jwks.json").write_text(json.dumps(TokenIssuer().jwks()))
        text = MEMORY_STATE.replace('[state]\ntype = "memory"\n', "")

        problems = text_problems(tmp_path, text, build_sinks=False)

        assert 2 == len(problems)
        for key in ("verifiers.grants.store", "verifiers.grants.single_use"):
            [problem] = [problem for problem in problems if f": {key}: " in problem]
            assert "the file has no [state] table: add one" in problem

    def test_store_key_under_monitor(self, tmp_path: Path) -> None:
        """A store written under [monitor] gets a message that names the [state] table."""
        text = MINIMAL_SEGMENT + '\n[monitor]\nstore = { type = "redis" }\n'

        [problem] = text_problems(tmp_path, text, build_sinks=False)

        assert problem.endswith(
            "policy.toml:8: monitor.store: store cannot be set in this table: it is the store "
            "of the [state] table, when the file has one"
        )

    def test_inline_password_rejected(self, tmp_path: Path) -> None:
        """A Redis URL with a password written inline is an error that does not repeat it."""
        text = MINIMAL_SEGMENT + '[state]\ntype = "redis"\nurl = "redis://:hunter2@redis:6379/0"\n'

        [problem] = text_problems(tmp_path, text, build_sinks=False)

        assert "state.url: url contains a password, which must not be written" in problem
        assert "hunter2" not in problem

    def test_password_from_environment(self, tmp_path: Path) -> None:
        """A password given on its own is read as a secret and added to the URL."""
        text = MINIMAL_SEGMENT + (
            '[state]\ntype = "redis"\nurl = "redis://127.0.0.1:6379/0"\n'
            'namespace = "orders-api"\npassword = { env = "ZT_TEST_REDIS_PASSWORD" }\n'
        )

        loaded = load_text(
            tmp_path, text, environ={"ZT_TEST_REDIS_PASSWORD": "p@ss word"}, build_sinks=False
        )

        assert loaded.state is not None
        assert "redis://:p%40ss%20word@127.0.0.1:6379/0" == loaded.state.url
        loaded.state.close()

    def test_password_inline_rejected(self, tmp_path: Path) -> None:
        """password must be a reference, and may not come on top of a URL that has one."""
        inline = MINIMAL_SEGMENT + (
            '[state]\ntype = "redis"\nurl = "redis://127.0.0.1:6379/0"\npassword = "hunter2"\n'
        )
        twice = MINIMAL_SEGMENT + (
            '[state]\ntype = "redis"\nurl = { env = "ZT_TEST_REDIS_URL" }\n'
            'password = { env = "ZT_TEST_REDIS_PASSWORD" }\n'
        )
        environ = {
            "ZT_TEST_REDIS_URL": "redis://:one@127.0.0.1:6379/0",
            "ZT_TEST_REDIS_PASSWORD": "two",
        }

        [inline_problem] = text_problems(tmp_path, inline, build_sinks=False)
        [twice_problem] = text_problems(tmp_path, twice, environ=environ, build_sinks=False)

        assert "state.password: password is a secret and must not be written" in inline_problem
        assert "the url has a password and password is set too" in twice_problem

    def test_referenced_url_hidden(self, tmp_path: Path) -> None:
        """A wrong URL from a reference is shown with its password hidden."""
        text = MINIMAL_SEGMENT + '[state]\ntype = "redis"\nurl = { env = "ZT_TEST_REDIS_URL" }\n'
        environ = {"ZT_TEST_REDIS_URL": "http://admin:hunter2@redis:6379/0"}

        [problem] = text_problems(tmp_path, text, environ=environ, build_sinks=False)

        assert "not 'http://admin:***@redis:6379/0'" in problem
        assert "hunter2" not in problem

    async def test_state_closed_at_shutdown(self, tmp_path: Path) -> None:
        """The middleware closes the file's Redis connections when the app's lifespan ends."""
        import asyncio

        from redis_helpers import REDIS_URL, delete_namespace, new_namespace, redis_or_skip

        redis_or_skip()
        namespace = new_namespace()
        path = tmp_path / "policy.toml"
        path.write_text(
            MINIMAL_SEGMENT
            + f'[state]\ntype = "redis"\nurl = "{REDIS_URL}"\nnamespace = "{namespace}"\n'
        )

        async def app(scope: Any, receive: Any, send: Any) -> None:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return

        middleware = ZeroTrustMiddleware.from_policy_file(app, path, events=[])
        state = middleware.active_policy.loaded.state
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[str] = []

        async def receive() -> dict[str, str]:
            return next(messages)

        async def send(message: dict[str, str]) -> None:
            sent.append(message["type"])

        try:
            await state.get_records("grants", ["absent"])
            assert asyncio.get_running_loop() in state._batchers

            await middleware({"type": "lifespan"}, receive, send)

            assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == sent
            assert asyncio.get_running_loop() not in state._batchers
        finally:
            state.close()
            delete_namespace(namespace)

    async def test_deployment_file_two_workers(
        self, tmp_path: Path, issuer: TokenIssuer, jwks_url: str
    ) -> None:
        """The file of docs/deployment.md shares signals, devices and grants across workers."""
        from redis_helpers import REDIS_URL, delete_namespace, new_namespace, redis_or_skip

        from zerotrust.cli import main
        from zerotrust.devices import DeviceRecord
        from zerotrust.grants import GrantBroker, generate_signing_key
        from zerotrust.monitor import RiskSignal

        redis_or_skip()
        namespace = new_namespace()
        text = deployment_policy()
        assert 'namespace = "orders-api"' in text
        path = tmp_path / "policy.toml"
        path.write_text(text.replace('namespace = "orders-api"', f'namespace = "{namespace}"'))
        device_issuer = TokenIssuer(issuer="https://mdm.example.com/", algorithms=("ES256",))
        (tmp_path / "mdm-jwks.json").write_text(json.dumps(device_issuer.jwks()))
        signing_key = generate_signing_key()
        environ = {"REDIS_URL": REDIS_URL, "ISSUER": issuer.issuer, "JWKS_URL": jwks_url}
        broker_store = _grant_store(REDIS_URL, namespace)
        workers: list[LoadedPolicy] = []
        try:
            broker = GrantBroker(signing_key=signing_key, store=broker_store)
            (tmp_path / "grant-jwks.json").write_text(json.dumps(broker.public_jwks()))
            sink = MemorySink()
            workers = [
                load_policy(path, environ=environ, build_sinks=False, extra_sinks=[sink])
                for _ in range(2)
            ]
            first, second = workers
            for worker in workers:
                assert worker.state is not None
                assert worker.monitor is not None
                assert worker.state is worker.monitor.store
                assert worker.state is worker.signals.store
                assert worker.state is worker.verifiers["grants"].store.state
                assert worker.state is worker.verifiers["device"].registry.state
                assert "identity" == worker.verifiers["identity"].name

            first.verifiers["device"].registry.put(DeviceRecord("pc-1", owner="alice"))
            reader = issuer.token(audience="orders-api", scopes=["orders:read"])
            orders = {
                "authorization": f"Bearer {reader}",
                "x-device-assertion": device_issuer.token(
                    "pc-1", audience="orders-api", alg="ES256", user="alice"
                ),
            }
            issued = broker.mint(
                subject="alice",
                segment="admin",
                methods=["GET"],
                paths=["/admin/"],
                reason="maintenance",
                requested_by="carol",
                duration=600,
            )
            admin = {
                "authorization": f"Bearer {issuer.token(audience='orders-api')}",
                "x-zerotrust-grant": issued.token,
            }

            async with _client(second) as client:
                device_known = await client.get("/api/orders/1", headers=orders)
                granted = await client.get("/admin/users", headers=admin)

            first.signals.raise_signal(
                RiskSignal(
                    kind="client_ip",
                    key="127.0.0.1",
                    detector="denied_burst",
                    reason="denied_burst",
                    raised_at=time.time(),
                    expires_at=time.time() + 60,
                )
            )
            status = main(
                [
                    "revoke",
                    issued.grant.grant_id,
                    "--store",
                    REDIS_URL,
                    "--namespace",
                    namespace,
                    "--revoked-by",
                    "dave",
                ]
            )
            async with _client(second) as client:
                flagged = await client.get("/api/orders/1", headers=orders)
                revoked = await client.get("/admin/users", headers=admin)
            second.events.flush()
            reasons = [event["reasons"] for event in sink.events if event.get("event") == "access"]
        finally:
            broker_store.state.close()
            for worker in workers:
                # The monitor writes detector windows from the writer thread until it stops.
                worker.events.close()
                if worker.state is not None:
                    await worker.state.aclose()  # type: ignore[attr-defined]
                    worker.state.close()
            delete_namespace(namespace)

        assert 200 == device_known.status_code
        assert 200 == granted.status_code
        assert 0 == status
        assert 403 == flagged.status_code
        assert 403 == revoked.status_code
        assert 4 == len(reasons)
        assert ["risk_flagged_client_ip"] == reasons[2]
        assert "grant_revoked" in reasons[3]


def _grant_store(url: str, namespace: str) -> Any:
    from zerotrust.grants.store import StateGrantStore
    from zerotrust.state import RedisStateStore

    return StateGrantStore(RedisStateStore(url, namespace=namespace))


def _client(loaded: LoadedPolicy) -> httpx.AsyncClient:
    middleware = ZeroTrustMiddleware(ok_app, **loaded.middleware_options())
    transport = httpx.ASGITransport(app=middleware)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


class TestMessages:
    def test_failed_verifier_only_real_error(self, tmp_path: Path) -> None:
        """A segment naming a verifier that failed to build reports that verifier's problem only."""
        text = """
            [verifiers.identity]
            type = "jwt"
            issuer = "https://login.example.com/"
            audience = "api"
            jwks_url = "https://login.example.com/jwks"

            [[segments]]
            name = "api"
            paths = ["/api/"]
            verifiers = ["identity"]
        """

        problems = text_problems(tmp_path, text, build_sinks=False)

        assert 1 == len(problems)
        assert "verifiers.identity: missing required key 'algorithms'" in problems[0]

    def test_misspelt_segments_has_line(self, tmp_path: Path) -> None:
        """A [[segment]] typo names the line of its first table."""
        text = (
            '[[segments]]\nname = "a"\npaths = ["/a"]\npublic = true\n\n[[segment]]\nname = "b"\n'
        )

        [problem] = text_problems(tmp_path, text, build_sinks=False)

        assert problem.endswith(
            "policy.toml:6: segment: unknown key 'segment'; did you mean 'segments'?"
        )

    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            ("redis", "unknown type 'redis': use one of memory, sqlite, state, or a"),
            ("memroy", "unknown type 'memroy'; did you mean 'memory'? Valid types are memory,"),
        ],
    )
    def test_unknown_type_sentence(self, tmp_path: Path, kind: str, expected: str) -> None:
        """An unknown type is one readable sentence, with or without a suggestion."""
        (tmp_path / "grant-jwks.json").write_text(json.dumps(TokenIssuer().jwks()))
        text = MINIMAL_SEGMENT + (
            f'[verifiers.grants]\ntype = "grant"\nkeys = {{ file = "grant-jwks.json" }}\n'
            f'store = {{ type = "{kind}" }}\n'
        )

        [problem] = [p for p in text_problems(tmp_path, text, build_sinks=False) if "type" in p]

        assert expected in problem

    def test_python_object_option(self, tmp_path: Path) -> None:
        """An option that takes a Python object gets a plain message, not a garbled type list."""
        (tmp_path / "custom_verifier_module.py").write_text(
            textwrap.dedent(
                """
                import httpx

                from zerotrust.verifiers import Verifier

                class ClientVerifier(Verifier):
                    def __init__(self, client: httpx.AsyncClient | None = None, **options):
                        super().__init__(**options)
                """
            )
        )
        text = MINIMAL_SEGMENT + (
            '[verifiers.custom]\ntype = "custom_verifier_module:ClientVerifier"\n'
            'client = { base_url = "http://127.0.0.1:9" }\n'
        )
        import sys

        sys.path.insert(0, str(tmp_path))
        try:
            [problem] = [
                p for p in text_problems(tmp_path, text, build_sinks=False) if "client" in p
            ]
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop("custom_verifier_module", None)

        assert "client takes a Python object, which a policy file cannot express" in problem
        assert "nothing" not in problem


class TestSegmentScopes:
    @pytest.mark.parametrize(
        ("scopes", "expected"),
        [
            (
                '{ GET = "api:read api:list" }',
                "scopes.GET must be an array of scope names, not 'api:read api:list': "
                'write ["api:read", "api:list"]',
            ),
            ('{ GET = "api:read" }', 'write ["api:read"]'),
            ("{ GET = 3 }", "scopes.GET must be an array of scope names, not 3"),
            ('"api:read"', "scopes must be an array of scope names or a table"),
        ],
    )
    def test_non_array_rejected(self, tmp_path: Path, scopes: str, expected: str) -> None:
        """A scope value that is not an array is an error that shows the array to write."""
        text = (
            '[[segments]]\nname = "api"\npaths = ["/api/"]\n'
            'verifiers = [{ type = "network", allow = ["10.0.0.0/8"] }]\n'
            f"scopes = {scopes}\n"
        )

        [problem] = text_problems(tmp_path, text, build_sinks=False)

        assert "policy.toml:5: segments[0].scopes" in problem
        assert expected in problem

    def test_whitespace_in_scope(self, tmp_path: Path) -> None:
        """A scope name with a space inside an array is rejected: no token can hold it."""
        text = (
            '[[segments]]\nname = "api"\npaths = ["/api/"]\n'
            'verifiers = [{ type = "network", allow = ["10.0.0.0/8"] }]\n'
            'scopes = { GET = ["api:read api:list"] }\n'
        )

        [problem] = text_problems(tmp_path, text, build_sinks=False)

        assert "scope 'api:read api:list' contains whitespace, so no token can hold it" in problem

    def test_python_whitespace_in_scope(self) -> None:
        """The Python API rejects the same scope, in the list and the per-method forms."""
        office = NetworkVerifier(allow=["10.0.0.0/8"])
        for scopes in ("a b", ["a b"], {"GET": "a b"}):
            with pytest.raises(ConfigurationError, match="contains whitespace"):
                Segment("api", paths=["/api/"], verifiers=[office], scopes=scopes)


class TestVerifierNames:
    def test_table_key_is_name(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """A [verifiers.NAME] table without name is named NAME in the engine and events."""
        loaded = load_policy(write_policy(tmp_path, issuer), build_sinks=False)

        assert "identity" == loaded.verifiers["identity"].name
        assert "office" == loaded.verifiers["office"].name

    def test_name_key_wins(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """name set in the table overrides the table key."""
        text = POLICY.replace('type = "network"', 'type = "network"\nname = "office-network"')

        loaded = load_policy(write_policy(tmp_path, issuer, text), build_sinks=False)

        assert "office-network" == loaded.verifiers["office"].name

    async def test_event_names_table_key(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """Access events list each verifier by the key of its table."""
        sink = MemorySink()
        loaded = load_policy(write_policy(tmp_path, issuer), build_sinks=False, extra_sinks=[sink])
        token = issuer.token(audience="api", roles=["admin"])

        async with _client(loaded) as client:
            await client.get("/admin/x", headers={"authorization": f"Bearer {token}"})
        loaded.events.flush()

        [event] = [event for event in sink.events if event.get("event") == "access"]
        assert ["identity", "office"] == [record["name"] for record in event["verifiers"]]


class TestPublicRoutes:
    def test_loaded(self, tmp_path: Path) -> None:
        """public_routes under [middleware] is loaded as a tuple of path rules."""
        text = '[middleware]\npublic_routes = ["/healthz", "/docs/"]\n' + MINIMAL_SEGMENT

        loaded = load_text(tmp_path, text, build_sinks=False)

        assert ("/healthz", "/docs/") == loaded.public_routes
        assert "public_routes" not in loaded.middleware_options()

    def test_string_rejected(self, tmp_path: Path) -> None:
        """A single string is an error with its key path."""
        text = '[middleware]\npublic_routes = "/healthz"\n' + MINIMAL_SEGMENT

        [problem] = text_problems(tmp_path, text, build_sinks=False)

        assert "policy.toml:2: middleware.public_routes: public_routes must be an array" in problem

    def test_from_policy_file_check_routes(self, tmp_path: Path) -> None:
        """from_policy_file(check_routes=True) reads the file's public_routes."""
        from starlette.applications import Starlette

        text = '[middleware]\npublic_routes = ["/healthz"]\n' + MINIMAL_SEGMENT
        path = tmp_path / "policy.toml"
        path.write_text(text)

        middleware = ZeroTrustMiddleware.from_policy_file(Starlette(), path, check_routes=True)

        assert middleware._route_check is not None
        assert ("/healthz",) == tuple(middleware._route_check.public_routes)
