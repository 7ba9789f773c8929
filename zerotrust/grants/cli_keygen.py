# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust grant-key`` command: create the private key that signs grant tokens."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .cli import KEY_VARIABLE, CommandError, print_error

__all__ = ["DESCRIPTION", "SUMMARY", "add_arguments", "run"]

SUMMARY = "create the private key that signs grant tokens and print its public JWKS"
DESCRIPTION = f"""\
Generate a private key for the grant broker and write it as unencrypted PEM (PKCS #8) to
--out, readable only by its owner (file mode 0600). An existing file is kept unless --force
is given. The public key is printed on standard output as a JSON Web Key Set, for the
verifier that checks grant tokens; the private key is never printed.

Point the other grant commands at the key with --key PATH or {KEY_VARIABLE}.

Exit status: 0 when the key was written, 1 when it was not, 2 on a usage error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``zerotrust grant-key``."""
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="PATH",
        help="file to write the private key PEM to",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing file; tokens signed with the old key stop verifying",
    )
    parser.add_argument(
        "--algorithm",
        choices=("EdDSA", "ES256"),
        default="EdDSA",
        help=(
            "signature algorithm: EdDSA with an Ed25519 key or ES256 with a P-256 key "
            "(default: %(default)s)"
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Write the key, then print its path and the public JWKS; return the exit status."""
    from .keys import generate_signing_key, private_key_to_pem, public_jwk

    key = generate_signing_key(args.algorithm)
    try:
        _write_private(args.out, private_key_to_pem(key), replace=args.force)
    except CommandError as error:
        return print_error("grant-key", error)

    print(
        f"Wrote the {args.algorithm} private key to {str(args.out)!r} (mode 0600). "
        f"Use it with --key {args.out} or {KEY_VARIABLE}={args.out}.",
        file=sys.stderr,
    )
    print("The public key, as a JWKS for the grant token verifier:", file=sys.stderr)
    print(json.dumps({"keys": [public_jwk(key)]}, indent=2))

    return 0


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to a file created with mode 0600; replace an existing file only when asked."""
    if path.is_dir():
        message = f"{str(path)!r} is a directory: pass the path of the key file to --out"
        raise CommandError(message)
    if path.exists() and not replace:
        message = (
            f"{str(path)!r} already exists: pass --force to replace it "
            "(grant tokens signed with the old key then stop verifying)"
        )
        raise CommandError(message)

    # Without --force, O_EXCL also rejects a file (or symlink) that appeared since the check.
    # With --force, the key goes to a new file that then replaces the old one in one step. In
    # both cases the file is created with mode 0600 rather than changed afterwards.
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(target, flags, 0o600)
    except FileExistsError:
        message = f"{str(target)!r} already exists: pass --force to replace it"
        raise CommandError(message) from None
    except OSError as error:
        message = f"cannot create the key file {str(target)!r}: {error.strerror}"
        raise CommandError(message) from None

    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(target, path)
    except OSError as error:
        # Never leave a partial key behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        message = f"cannot write the key file {str(path)!r}: {error.strerror}"
        raise CommandError(message) from None
