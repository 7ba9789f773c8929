# SPDX-License-Identifier: Apache-2.0
"""Hypothesis strategies for methods, raw paths, headers, client addresses and tokens."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from zerotrust.testing import TokenIssuer

__all__ = [
    "SCOPES",
    "TOKEN_AUDIENCE",
    "admin_paths",
    "authorization_values",
    "forwarded_for_values",
    "header_lists",
    "ip_addresses",
    "methods",
    "network_lists",
    "path_texts",
    "raw_paths",
    "tokens",
    "valid_tokens",
]

TOKEN_AUDIENCE = "api"
SCOPES = ("read", "write", "admin")
ROLES = ("ops", "viewer")

_COMMON_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_ODD_METHODS = ("TRACE", "CONNECT", "PROPFIND", "MKCOL", "get", "Get", "M-SEARCH", "BREW", "")
# RFC 9110 token characters, from which a client may build any method name.
_TOKEN_CHARACTERS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# Segments that reach the policy's zones, plus every form that routers read differently.
_PATH_SEGMENTS: tuple[bytes, ...] = (
    b"api",
    b"admin",
    b"healthz",
    b"items",
    b"x",
    b"",
    b".",
    b"..",
    b"...",
    b"admin.",
    b"api..",
    b"%2e",
    b"%2E",
    b"%2e%2e",
    b".%2e",
    b"%2e.",
    b"%2f",
    b"%2F",
    b"api%2fx",
    b"%5c",
    b"%5C",
    b"%00",
    b"%25",
    b"%252e",
    b"%252e%252e",
    b"%25%32%65",
    b"%",
    b"%4",
    b"%zz",
    b"%41dmin",
    b"%61%64%6d%69%6e",
    b"%ff",
    b"%c3%a9",
    b"%c3",
    "é".encode(),
    "管理".encode(),
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b";jsessionid=1",
    b"admin;x=1",
    b"..;",
    b"\\",
    b"..\\admin",
    b"\x00",
    b"\x1f",
    b"\x7f",
    b" ",
    b"%20",
    b"?",
    b"#frag",
    b"~user",
)
_PREFIXES: tuple[bytes, ...] = (b"/", b"/", b"/", b"//", b"///", b"", b"\\", b"/./", b"/../")


def methods() -> st.SearchStrategy[str]:
    """HTTP methods: mostly common ones, some odd but legal tokens, and arbitrary tokens."""
    return st.one_of(
        st.sampled_from(_COMMON_METHODS),
        st.sampled_from(_ODD_METHODS),
        st.text(alphabet=_TOKEN_CHARACTERS, min_size=1, max_size=12),
    )


def raw_paths() -> st.SearchStrategy[bytes]:
    """
    Raw request paths as a client may send them, percent-encoding intact.

    Half are clean paths into one of the policy's zones, so that allowed requests are common
    too. The rest mix dot segments, repeated slashes, encoded dots, slashes and backslashes,
    NUL, double encoding, non-ASCII and invalid UTF-8 bytes, ``;params``, trailing dots and
    stray ``%`` signs.
    """
    zone = st.sampled_from((b"api", b"admin", b"healthz"))
    clean_segment = st.text(alphabet="abcxyz0123456789-_~", min_size=1, max_size=8).map(str.encode)
    clean = st.builds(
        lambda first, rest, end: b"/" + b"/".join([first, *rest]) + end,
        zone,
        st.lists(
            st.one_of(clean_segment, st.sampled_from((b"internal", b"raw", b"items"))), max_size=4
        ),
        st.sampled_from((b"", b"/")),
    )

    segment = st.one_of(
        st.sampled_from(_PATH_SEGMENTS),
        st.binary(min_size=1, max_size=6),
        clean_segment,
    )
    tricky = st.builds(
        lambda prefix, first, rest, end: prefix + b"/".join([first, *rest]) + end,
        st.sampled_from(_PREFIXES),
        st.one_of(zone, st.just(b"x"), segment),
        st.lists(segment, max_size=8),
        st.sampled_from((b"", b"", b"/", b"/.", b"/..", b".")),
    )

    return st.one_of(clean, tricky)


def path_texts() -> st.SearchStrategy[str]:
    """Decoded paths as text: path-like strings with dots and slashes, and arbitrary text."""
    piece = st.one_of(
        st.sampled_from(("", ".", "..", "...", "a", "api", "admin", "healthz", ".a", "a.", "é")),
        st.text(max_size=4),
    )
    path_like = st.builds(
        lambda leading, pieces: leading + "/".join(pieces),
        st.sampled_from(("/", "//", "", "/./", "/../")),
        st.lists(piece, max_size=10),
    )

    return st.one_of(path_like, st.text(max_size=30))


def ip_addresses() -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """IPv4 and IPv6 addresses, including IPv4-mapped IPv6 and loopback."""
    mapped = st.ip_addresses(v=4).map(lambda address: ipaddress.IPv6Address(f"::ffff:{address}"))
    fixed = st.sampled_from(
        [ipaddress.ip_address(text) for text in ("127.0.0.1", "::1", "10.0.0.1", "203.0.113.7")]
    )
    return st.one_of(fixed, st.ip_addresses(), mapped)


def network_lists() -> st.SearchStrategy[list[str]]:
    """Lists of trusted proxy entries: single addresses and CIDR networks of both families.

    A prefix of 0 (trust everyone) is left out: it warns, and the warning has its own test.
    """
    network = st.one_of(
        ip_addresses().map(str),
        st.builds(
            lambda address, prefix: str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),
            st.ip_addresses(v=4),
            st.integers(1, 32),
        ),
        st.builds(
            lambda address, prefix: str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),
            st.ip_addresses(v=6),
            st.integers(1, 128),
        ),
        st.sampled_from(("127.0.0.1", "10.0.0.0/8", "::1", "::ffff:127.0.0.1")),
    )
    return st.lists(network, max_size=4)


def forwarded_for_values() -> st.SearchStrategy[str]:
    """``X-Forwarded-For`` or ``Forwarded`` values: valid chains, ports, brackets and garbage."""
    node = st.one_of(
        ip_addresses().map(str),
        st.builds(
            lambda address, port: f"{address}:{port}", st.ip_addresses(v=4), st.integers(0, 70000)
        ),
        st.builds(lambda address: f"[{address}]", st.ip_addresses(v=6)),
        st.builds(
            lambda address, port: f"[{address}]:{port}", st.ip_addresses(v=6), st.integers(0, 70000)
        ),
        st.sampled_from(
            ("unknown", "", " ", "[::1", "1.2.3", "256.1.1.1", "_hidden", "::ffff:1.2.3.4")
        ),
        st.text(max_size=12),
    )
    chain = st.lists(node, min_size=1, max_size=5).map(", ".join)
    forwarded = st.lists(
        st.builds(lambda value: f'for="{value}";proto=https', node), min_size=1, max_size=3
    ).map(", ".join)

    return st.one_of(chain, forwarded, st.text(max_size=40))


def valid_tokens(issuer: TokenIssuer) -> st.SearchStrategy[str]:
    """Tokens the issuer signs for the ``api`` audience, often with every scope and role."""
    return st.builds(
        issuer.token,
        st.sampled_from(("alice", "bob", "svc-1")),
        scopes=st.one_of(st.just(SCOPES), st.lists(st.sampled_from(SCOPES), unique=True)),
        roles=st.one_of(st.just(ROLES), st.lists(st.sampled_from(ROLES), unique=True)),
        alg=st.sampled_from(sorted(issuer.private_keys)),
    )


def tokens(issuer: TokenIssuer) -> st.SearchStrategy[str]:
    """Valid tokens, truncated or tampered ones, tokens for another audience, and garbage."""
    valid = valid_tokens(issuer)
    truncated = st.builds(
        lambda token, fraction: token[: int(len(token) * fraction)],
        valid,
        st.floats(0.05, 0.99),
    )
    tampered = valid.map(
        lambda token: token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    )
    wrong_audience = st.builds(issuer.token, audience=st.just("other"), scopes=st.just(SCOPES))
    expired = st.builds(issuer.token, lifetime=st.just(-3600.0), scopes=st.just(SCOPES))
    garbage = st.one_of(
        st.text(alphabet=_BASE64URL + ".", min_size=1, max_size=60),
        st.text(min_size=1, max_size=30),
        st.just("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."),
    )

    return st.one_of(valid, valid, truncated, tampered, wrong_audience, expired, garbage)


def authorization_values(issuer: TokenIssuer) -> st.SearchStrategy[str]:
    """``Authorization`` header values: bearer tokens in several spellings, other schemes, junk."""
    token = tokens(issuer)
    return st.one_of(
        token.map(lambda value: f"Bearer {value}"),
        token.map(lambda value: f"bearer  {value} "),
        token.map(lambda value: f"Basic {value}"),
        token,
        st.just("Bearer"),
        st.just("Bearer "),
        st.text(max_size=20),
    )


def _header_value() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20),
        st.text(max_size=10),
        # Oversized values that a server with no header limit would pass on.
        st.integers(4096, 20000).map(lambda size: "v" * size),
    )


def header_lists(issuer: TokenIssuer) -> st.SearchStrategy[list[tuple[str, str]]]:
    """
    Header lists as (name, value) text pairs, in the order the client sent them.

    Half are well formed: one ``Authorization: Bearer`` header with a token the issuer signed,
    plus harmless extras. The rest repeat names freely, so they include duplicated ``Host``
    and ``Authorization`` headers. ``X-Forwarded-For`` carries valid chains and garbage,
    ``X-Request-ID`` may carry CR/LF or be overlong, and some values are several kilobytes long.
    """
    random_name = st.text(alphabet=_TOKEN_CHARACTERS, min_size=1, max_size=16).map(str.lower)
    request_id = st.tuples(
        st.just("x-request-id"),
        st.one_of(
            st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40),
            st.just("abc\r\nx-injected: 1"),
            st.just("r" * 200),
            st.text(max_size=20),
        ),
    )
    forwarding = st.tuples(
        st.sampled_from(("x-forwarded-for", "forwarded")), forwarded_for_values()
    )
    extra = st.one_of(
        request_id,
        forwarding,
        st.tuples(st.sampled_from(("user-agent", "cookie", "content-type")), _header_value()),
        st.tuples(
            random_name.filter(lambda name: name not in ("host", "authorization")), _header_value()
        ),
    )
    well_formed = st.builds(
        lambda token, extras: [("authorization", f"Bearer {token}"), *extras],
        valid_tokens(issuer),
        st.lists(extra, max_size=3),
    )

    header = st.one_of(
        st.tuples(st.just("authorization"), authorization_values(issuer)),
        st.tuples(st.just("authorization"), authorization_values(issuer)),
        st.tuples(
            st.just("host"),
            st.one_of(
                st.sampled_from(("example.com", "EXAMPLE.com:8443", "[::1]:80", "a..b", "x:y", "")),
                st.text(max_size=20),
            ),
        ),
        extra,
        st.tuples(random_name, _header_value()),
    )
    return st.one_of(well_formed, st.lists(header, max_size=8))


def admin_paths() -> st.SearchStrategy[bytes]:
    """Raw paths that try to reach ``/admin/`` from another zone by dots, slashes or encoding."""
    start = st.sampled_from(
        (b"/api/", b"/healthz/", b"/api/items/", b"//", b"/", b"/api;x/", b"/x/")
    )
    climb = st.lists(
        st.sampled_from((b"../", b"%2e%2e/", b".%2e/", b"./", b"/", b"..;/", b"%2e/", b"..%2f")),
        max_size=4,
    ).map(b"".join)
    admin = st.sampled_from((b"admin", b"ADMIN", b"%61dmin", b"admin.", b"admin%00", b"admin;x"))
    rest = st.sampled_from((b"", b"/", b"/x", b"/x/../y", b"/.", b"/%2e%2e/api"))
    return st.builds(lambda *parts: b"".join(parts), start, climb, admin, rest)
