# SPDX-License-Identifier: Apache-2.0
"""Signing keys for grant tokens: generate, store, load and publish Ed25519 or P-256 keys."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import get_default_algorithms

from ..exceptions import ConfigurationError

__all__ = [
    "GrantAlgorithm",
    "SigningKey",
    "algorithm_for",
    "generate_signing_key",
    "key_id",
    "load_signing_key",
    "private_key_to_pem",
    "public_jwk",
    "write_signing_key",
]

GrantAlgorithm = Literal["EdDSA", "ES256"]
SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

# Group or other permission bits on a private key file; OpenSSH rejects such key files too.
_UNSAFE_MODE_BITS = 0o077


def generate_signing_key(algorithm: GrantAlgorithm = "EdDSA") -> SigningKey:
    """
    Generate a new private key for signing grant tokens.

    Args:
        algorithm: ``EdDSA`` for an Ed25519 key (the default) or ``ES256`` for a P-256 key.

    .. versionadded:: 0.1.0
    """
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    message = f"grant signing algorithm must be 'EdDSA' or 'ES256', not {algorithm!r}"
    raise ConfigurationError(message, parameter="algorithm", value=algorithm)


def algorithm_for(key: object) -> GrantAlgorithm:
    """Return the JWS algorithm for a grant signing key, or raise `ConfigurationError`."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    message = (
        f"a grant signing key must be an Ed25519 or EC P-256 private key, not "
        f"{type(key).__name__}; create one with generate_signing_key()"
    )
    raise ConfigurationError(message, parameter="signing_key", value=type(key).__name__)


def private_key_to_pem(key: SigningKey) -> bytes:
    """Serialise a signing key as unencrypted PKCS #8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_signing_key(path: str | os.PathLike[str], key: SigningKey) -> Path:
    """
    Write a signing key to a new PEM file that only its owner can read (mode 0600).

    Raises:
        FileExistsError: if the file exists; a key is never overwritten.

    .. versionadded:: 0.1.0
    """
    target = Path(path)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_key_to_pem(key))

    return target


def load_signing_key(
    source: str | bytes | os.PathLike[str], *, password: bytes | None = None
) -> SigningKey:
    """
    Load a grant signing key from PEM text, or from a PEM file given by its path.

    A ``str`` or ``bytes`` value that contains ``-----BEGIN`` is PEM; anything else is a path.

    Raises:
        ConfigurationError: if the file is readable or writable by group or others, or the
            key is not an Ed25519 or P-256 private key.

    .. versionadded:: 0.1.0
    """
    if isinstance(source, str | bytes) and (
        b"-----BEGIN" in (source.encode() if isinstance(source, str) else source)
    ):
        data = source.encode() if isinstance(source, str) else source
        origin = "PEM text"
    else:
        path = Path(os.fsdecode(source))
        _check_permissions(path)
        data = path.read_bytes()
        origin = str(path)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as error:
        message = f"reading the grant signing key from {origin} failed: {error}"
        raise ConfigurationError(message, parameter="signing_key", value=origin) from None
    algorithm_for(key)

    return key  # type: ignore[return-value]


def _check_permissions(path: Path) -> None:
    mode = path.stat().st_mode
    # NOTE: Windows has no POSIX permission bits, so the check only runs on POSIX systems.
    if os.name == "posix" and stat.S_IMODE(mode) & _UNSAFE_MODE_BITS:
        message = (
            f"grant signing key file {path} has mode {stat.S_IMODE(mode):04o}, so other users "
            f"can access it; run: chmod 600 {path}"
        )
        raise ConfigurationError(message, parameter="signing_key", value=str(path))


def public_jwk(key: SigningKey) -> dict[str, Any]:
    """Return the public half of a signing key as a JWK with ``kid``, ``alg`` and ``use``."""
    alg = algorithm_for(key)
    algorithm = get_default_algorithms()[alg]
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    jwk.update(kid=key_id(jwk), alg=alg, use="sig")

    return jwk


def key_id(jwk: dict[str, Any]) -> str:
    """Compute the RFC 7638 thumbprint of a public JWK, which serves as its ``kid``."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("crv", "kty", "x")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()

    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
