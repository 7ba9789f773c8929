# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from zerotrust.testing import TokenIssuer, serve

# CI runs a bounded number of examples with deadlines; HYPOTHESIS_PROFILE=fuzz runs far more.
settings.register_profile(
    "ci", max_examples=150, deadline=500, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=1000)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(name="issuer", scope="session")
def fixture_issuer() -> TokenIssuer:
    """A token issuer with RS256, ES256 and EdDSA keys, shared by the session."""
    # Fixed key ids, so tests can name them; real issuers get random ones.
    return TokenIssuer(algorithms=("RS256", "ES256", "EdDSA"), kid_suffix="1")


@pytest.fixture(name="jwks_url", scope="session")
def fixture_jwks_url(issuer: TokenIssuer) -> Iterator[str]:
    """The issuer's JWKS, served by uvicorn on 127.0.0.1."""
    with serve(issuer.jwks_app()) as base_url:
        yield f"{base_url}/.well-known/jwks.json"
