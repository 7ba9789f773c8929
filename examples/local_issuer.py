# SPDX-License-Identifier: Apache-2.0
"""A local token issuer for trying the examples: serves a JWKS on loopback and prints tokens."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from zerotrust.testing import TokenIssuer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--port", type=int, default=8900, help="TCP port on 127.0.0.1 (default 8900)"
    )
    parser.add_argument("--audience", default="inventory-api", help="'aud' of the minted tokens")
    parser.add_argument("--subject", default="alice", help="'sub' of the minted tokens")
    parser.add_argument(
        "--lifetime",
        type=float,
        default=3600.0,
        help="seconds until the tokens expire (default 3600)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base_url = f"http://127.0.0.1:{args.port}"
    issuer = TokenIssuer(issuer=base_url, algorithms=("RS256",))

    def mint(*scopes: str) -> str:
        return issuer.token(
            args.subject, audience=args.audience, scopes=scopes, lifetime=args.lifetime
        )

    # The keys live only in this process: tokens stop verifying once it exits.
    print(f"export ZEROTRUST_ISSUER={base_url}")
    print(f"export ZEROTRUST_JWKS_URL={base_url}/.well-known/jwks.json")
    print(f"export ZEROTRUST_AUDIENCE={args.audience}")
    print(f"export READ_TOKEN={mint('items:read')}")
    print(f"export WRITE_TOKEN={mint('items:read', 'items:write')}")
    print(f"export PLAIN_TOKEN={mint()}")
    sys.stdout.flush()

    uvicorn.run(issuer.jwks_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
