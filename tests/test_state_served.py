# SPDX-License-Identifier: Apache-2.0
"""Two uvicorn processes that share state on the Redis server at 127.0.0.1:6379."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_helpers import REDIS_URL, delete_namespace, free_port, new_namespace, redis_or_skip
from state_app import DEVICE_AUDIENCE, DEVICE_ISSUER, IDENTITY_ISSUER

from zerotrust.devices import DeviceRecord, StateDeviceRegistry
from zerotrust.grants import GrantBroker, generate_signing_key
from zerotrust.grants.store import StateGrantStore
from zerotrust.testing import TokenIssuer

pytestmark = pytest.mark.served

THRESHOLD = 5
TESTS = Path(__file__).parent


@dataclass
class Cluster:
    """Two workers of one app, their event files, and the state they share."""

    namespace: str
    urls: list[str]
    event_files: list[Path]
    identity: TokenIssuer
    device_issuer: TokenIssuer
    broker: GrantBroker

    def events(self, index: int) -> list[dict[str, Any]]:
        path = self.event_files[index]
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def all_events(self) -> list[dict[str, Any]]:
        return self.events(0) + self.events(1)


def start_worker(port: int, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "state_app:create_app",
        "--factory",
        "--app-dir",
        str(TESTS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-proxy-headers",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL)  # noqa: S603 -- a fixed argv


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def answers(url: str) -> bool:
    try:
        return 200 == httpx.get(f"{url}/healthz", timeout=1).status_code
    except httpx.HTTPError:
        return False


@pytest.fixture(name="cluster")
def fixture_cluster(tmp_path: Path, issuer: TokenIssuer) -> Iterator[Cluster]:
    """Two uvicorn workers on two loopback ports with a fresh Redis namespace."""
    redis_or_skip()
    from zerotrust.state import RedisStateStore

    namespace = new_namespace()
    device_issuer = TokenIssuer(issuer=DEVICE_ISSUER, algorithms=("ES256",))
    state = RedisStateStore(REDIS_URL, namespace=namespace)
    broker = GrantBroker(signing_key=generate_signing_key(), store=StateGrantStore(state))
    environment = {
        **os.environ,
        "ZT_REDIS_URL": REDIS_URL,
        "ZT_NAMESPACE": namespace,
        "ZT_BURST_THRESHOLD": str(THRESHOLD),
        "ZT_IDENTITY_JWKS": json.dumps(issuer.jwks()),
        "ZT_DEVICE_JWKS": json.dumps(device_issuer.jwks()),
        "ZT_GRANT_JWKS": json.dumps(broker.public_jwks()),
    }
    workers: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    event_files: list[Path] = []
    try:
        for index in range(2):
            port = free_port()
            event_files.append(tmp_path / f"events-{index}.jsonl")
            environment["ZT_EVENTS_FILE"] = str(event_files[-1])
            workers.append(start_worker(port, dict(environment)))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            assert wait_until(lambda url=url: answers(url)), f"{url} did not start"
        yield Cluster(namespace, urls, event_files, issuer, device_issuer, broker)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
        state.close()
        delete_namespace(namespace)


def bearer(cluster: Cluster, subject: str, roles: tuple[str, ...] = ()) -> dict[str, str]:
    token = cluster.identity.token(subject, audience="api", roles=roles, alg="RS256")
    return {"authorization": f"Bearer {token}"}


class TestSharedDetectors:
    def test_split_burst_fires_once(self, cluster: Cluster) -> None:
        """A denied burst split across two workers trips the detector exactly once."""
        headers = bearer(cluster, "mallory")
        denials = 2 * (THRESHOLD + 1)
        for index in range(denials):
            response = httpx.get(f"{cluster.urls[index % 2]}/api/items", headers=headers)
            assert 403 == response.status_code

        def all_delivered() -> bool:
            access = [e for e in cluster.all_events() if e.get("event") == "access"]
            return len([e for e in access if e["path"] == "/api/items"]) == denials

        assert wait_until(all_delivered)
        assert wait_until(
            lambda: any(e.get("event") == "anomaly" for e in cluster.all_events()), timeout=5
        )
        # Both workers saw more than the threshold; give a second anomaly time to show up.
        time.sleep(0.5)
        anomalies = [e for e in cluster.all_events() if e.get("event") == "anomaly"]
        assert 1 == len(anomalies)
        assert "denied_burst" == anomalies[0]["detector"]
        assert "mallory" == anomalies[0]["subject"]

    def test_flag_denies_on_both(self, cluster: Cluster) -> None:
        """The risk flag one worker raises denies the subject on the other worker too."""
        headers = bearer(cluster, "trudy")
        for _ in range(THRESHOLD + 1):
            assert 403 == httpx.get(f"{cluster.urls[0]}/api/items", headers=headers).status_code
        assert wait_until(
            lambda: any(e.get("event") == "anomaly" for e in cluster.events(0)), timeout=10
        )
        reader = bearer(cluster, "trudy", roles=("reader",))

        for url in cluster.urls:
            response = httpx.get(f"{url}/api/items", headers=reader)
            assert 403 == response.status_code
        assert wait_until(
            lambda: any(e.get("reasons") == ["risk_flagged_subject"] for e in cluster.events(1))
        )


class TestSharedGrants:
    def test_revoked_through_one_refused_by_other(self, cluster: Cluster) -> None:
        """A grant revoked through one worker is refused by the other on its next request."""
        issued = cluster.broker.mint(
            subject="olivia",
            segment="ops",
            methods=["GET"],
            paths=["/ops/"],
            reason="incident 42",
            requested_by="olivia",
            duration=600,
        )
        headers = {**bearer(cluster, "olivia"), "x-zerotrust-grant": issued.token}
        for url in cluster.urls:
            assert 200 == httpx.get(f"{url}/ops/restart", headers=headers).status_code

        revoked = httpx.post(f"{cluster.urls[0]}/control/revoke/{issued.grant_id}")
        response = httpx.get(f"{cluster.urls[1]}/ops/restart", headers=headers)

        assert {"revoked": True} == revoked.json()
        assert 403 == response.status_code
        assert wait_until(
            lambda: any("grant_revoked" in e.get("reasons", ()) for e in cluster.events(1))
        )


class TestSharedDevices:
    def test_revoked_device_refused_by_both(self, cluster: Cluster) -> None:
        """A device revoked in the shared registry is refused by both workers."""
        from zerotrust.state import RedisStateStore

        state = RedisStateStore(REDIS_URL, namespace=cluster.namespace)
        registry = StateDeviceRegistry(state)
        registry.put(DeviceRecord("laptop-7", owner="dana", managed=True))
        assertion = cluster.device_issuer.token(
            "laptop-7", audience=DEVICE_AUDIENCE, alg="ES256", user="dana"
        )
        headers = {**bearer(cluster, "dana"), "x-device-assertion": assertion}
        for url in cluster.urls:
            assert 200 == httpx.get(f"{url}/device/files", headers=headers).status_code

        registry.revoke("laptop-7")
        statuses = [
            httpx.get(f"{url}/device/files", headers=headers).status_code for url in cluster.urls
        ]
        state.close()

        assert [403, 403] == statuses
        denied = [e for e in cluster.all_events() if e.get("reasons") == ["device_revoked"]]
        assert wait_until(
            lambda: (
                2
                == len([e for e in cluster.all_events() if e.get("reasons") == ["device_revoked"]])
            )
        ), denied


def test_identity_issuer_matches(issuer: TokenIssuer) -> None:
    """The app trusts the issuer the shared fixture mints tokens with."""
    assert IDENTITY_ISSUER == issuer.issuer
