# SPDX-License-Identifier: Apache-2.0
"""Tests of the grant stores: memory and SQLite, alone and under concurrent threads."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerotrust.exceptions import ConfigurationError
from zerotrust.grants import Grant, GrantError, GrantStore, MemoryGrantStore, SQLiteGrantStore
from zerotrust.grants.errors import GrantStoreError

NOW = 1_800_000_000.0


def make_grant(grant_id: str = "a" * 32, **changes: object) -> Grant:
    grant = Grant(
        grant_id=grant_id,
        subject="bob",
        segment="admin",
        methods=("GET", "POST"),
        paths=("/admin/", "/admin/users/*"),
        not_before=NOW,
        expires_at=NOW + 600,
        reason="INC-42",
        requested_by="bob",
        approved_by="alice",
        created_at=NOW,
        issued_at=NOW,
    )
    return dataclasses.replace(grant, **changes)  # type: ignore[arg-type]


@pytest.fixture(name="store", params=["memory", "sqlite"])
def fixture_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GrantStore]:
    store: GrantStore
    if request.param == "memory":
        store = MemoryGrantStore(clock=lambda: NOW)
    else:
        store = SQLiteGrantStore(tmp_path / "grants.db", clock=lambda: NOW)
    yield store
    store.close()


class TestGrantStore:
    def test_round_trip(self, store: GrantStore) -> None:
        """A saved grant reads back unchanged."""
        grant = make_grant()
        store.save(grant)

        assert grant == store.get(grant.grant_id)

    def test_get_unknown(self, store: GrantStore) -> None:
        """An unknown id reads as None."""
        assert store.get("missing") is None

    def test_revoke(self, store: GrantStore) -> None:
        """revoke records the time, the person and the reason."""
        store.save(make_grant())

        revoked = store.revoke("a" * 32, NOW + 5, "carol", "done")

        assert revoked is not None
        assert NOW + 5 == revoked.revoked_at
        assert "carol" == revoked.revoked_by
        assert "done" == revoked.revocation_reason
        assert store.is_revoked("a" * 32)

    def test_revoke_keeps_first(self, store: GrantStore) -> None:
        """A second revocation does not overwrite the first."""
        store.save(make_grant())
        store.revoke("a" * 32, NOW + 5, "carol")

        again = store.revoke("a" * 32, NOW + 9, "dave")

        assert again is not None
        assert "carol" == again.revoked_by
        assert NOW + 5 == again.revoked_at

    def test_revoke_unknown(self, store: GrantStore) -> None:
        """Revoking an unknown grant returns None."""
        assert store.revoke("missing", NOW, "carol") is None

    def test_save_keeps_revocation(self, store: GrantStore) -> None:
        """Saving a stale copy of a grant does not undo its revocation."""
        grant = make_grant(pending=True, issued_at=None)
        store.save(grant)
        store.revoke(grant.grant_id, NOW + 1, "carol")

        store.save(dataclasses.replace(grant, pending=False, issued_at=NOW + 2))

        stored = store.get(grant.grant_id)
        assert stored is not None
        assert "carol" == stored.revoked_by
        assert stored.pending is False

    def test_revocation_states(self, store: GrantStore) -> None:
        """The revocation state distinguishes valid, revoked and unknown grants."""
        store.save(make_grant("1" * 32))
        store.save(make_grant("2" * 32))
        store.revoke("2" * 32, NOW, "carol")

        assert "valid" == store.revocation_state("1" * 32)
        assert "revoked" == store.revocation_state("2" * 32)
        assert "unknown" == store.revocation_state("3" * 32)

    def test_unknown_counts_as_revoked(self, store: GrantStore) -> None:
        """is_revoked fails closed for a grant the store does not know."""
        assert store.is_revoked("3" * 32)

    def test_list_filters(self, store: GrantStore) -> None:
        """list leaves out revoked and expired grants unless include_inactive is set."""
        store.save(make_grant("1" * 32, created_at=NOW))
        store.save(make_grant("2" * 32, created_at=NOW + 1))
        store.save(make_grant("3" * 32, created_at=NOW + 2, expires_at=NOW - 1))
        store.save(make_grant("4" * 32, created_at=NOW + 3, subject="carol", segment="ops"))
        store.revoke("2" * 32, NOW, "carol")

        assert ["1" * 32, "4" * 32] == [grant.grant_id for grant in store.list(now=NOW)]
        assert 4 == len(store.list(include_inactive=True, now=NOW))
        assert ["4" * 32] == [g.grant_id for g in store.list(subject="carol", now=NOW)]
        assert ["1" * 32] == [g.grant_id for g in store.list(segment="admin", now=NOW)]

    def test_list_default_now(self, store: GrantStore) -> None:
        """Without now, list uses the store's clock."""
        store.save(make_grant("1" * 32, expires_at=NOW - 1))
        store.save(make_grant("2" * 32))

        assert ["2" * 32] == [grant.grant_id for grant in store.list()]

    def test_mark_reaped_once(self, store: GrantStore) -> None:
        """Only the first mark_reaped call marks a grant."""
        store.save(make_grant())

        assert store.mark_reaped("a" * 32, NOW)
        assert not store.mark_reaped("a" * 32, NOW + 1)
        assert not store.mark_reaped("missing", NOW)
        assert NOW == store.get("a" * 32).reaped_at  # type: ignore[union-attr]

    def test_hostile_ids(self, store: GrantStore) -> None:
        """Ids and names with quotes and SQL are stored as data."""
        grant = make_grant("x'; DROP TABLE grants; --", subject="o'hara", reason='it\'s "fine"')
        store.save(grant)

        assert grant == store.get(grant.grant_id)
        assert "unknown" == store.revocation_state("' OR '1'='1")
        assert "unknown" != store.revocation_state(grant.grant_id)

    def test_concurrent_threads(self, store: GrantStore) -> None:
        """Threads saving, reading and revoking at once lose no grant and no revocation."""
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for index in range(25):
                    grant_id = f"{worker:02d}{index:030d}"
                    store.save(make_grant(grant_id))
                    assert store.get(grant_id) is not None
                    if index % 2:
                        store.revoke(grant_id, NOW, f"worker-{worker}")
                    store.list(now=NOW)
            except BaseException as error:  # noqa: BLE001 -- reported by the assert below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert [] == errors
        assert 200 == len(store.list(include_inactive=True, now=NOW))
        assert 8 * 13 == len(store.list(now=NOW))


class TestMemoryGrantStore:
    def test_evicts_after_retention(self) -> None:
        """Grants expired longer than the retention are evicted when listing."""
        clock = [NOW]
        store = MemoryGrantStore(retention=3600, clock=lambda: clock[0])
        store.save(make_grant("1" * 32, expires_at=NOW + 10))
        store.save(make_grant("2" * 32, expires_at=NOW + 7200))
        clock[0] = NOW + 3611

        store.list()

        assert store.get("1" * 32) is None
        assert store.get("2" * 32) is not None

    def test_full(self) -> None:
        """A full store evicts stale grants, then raises grant_store_full."""
        clock = [NOW]
        store = MemoryGrantStore(retention=300, max_grants=2, clock=lambda: clock[0])
        store.save(make_grant("1" * 32, expires_at=NOW + 10))
        store.save(make_grant("2" * 32))
        clock[0] = NOW + 400
        store.save(make_grant("3" * 32, expires_at=NOW + 1000))

        with pytest.raises(GrantError) as caught:
            store.save(make_grant("4" * 32, expires_at=NOW + 1000))

        assert "grant_store_full" == caught.value.reason
        assert 2 == len(store)

    def test_update_when_full(self) -> None:
        """Updating a stored grant works even when the store is full."""
        store = MemoryGrantStore(max_grants=1, clock=lambda: NOW)
        store.save(make_grant())

        store.save(make_grant(approved_by="dave"))

        assert "dave" == store.get("a" * 32).approved_by  # type: ignore[union-attr]

    def test_cached_state(self) -> None:
        """The memory store checks revocations without a thread."""
        store = MemoryGrantStore()
        store.save(make_grant())

        assert "valid" == store.revocation_state_cached("a" * 32)

    @pytest.mark.parametrize("retention", [0, 299, float("inf")])
    def test_invalid_retention(self, retention: float) -> None:
        """A retention shorter than the maximum leeway, or infinite, raises."""
        with pytest.raises(ConfigurationError):
            MemoryGrantStore(retention=retention)

    def test_invalid_max_grants(self) -> None:
        """max_grants must be at least 1."""
        with pytest.raises(ConfigurationError):
            MemoryGrantStore(max_grants=0)


class TestSQLiteGrantStore:
    def test_wal_mode(self, tmp_path: Path) -> None:
        """The database runs in WAL mode."""
        store = SQLiteGrantStore(tmp_path / "grants.db")
        store.save(make_grant())
        store.close()

        with sqlite3.connect(tmp_path / "grants.db") as connection:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        connection.close()

        assert "wal" == mode

    def test_indexes(self, tmp_path: Path) -> None:
        """The schema indexes expiry, subject and segment."""
        SQLiteGrantStore(tmp_path / "grants.db").close()

        connection = sqlite3.connect(tmp_path / "grants.db")
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        connection.close()

        assert {"grants_expires_at", "grants_subject", "grants_segment"} <= names

    def test_shared_between_instances(self, tmp_path: Path) -> None:
        """A revocation through one instance is seen at once by another, like another process."""
        writer = SQLiteGrantStore(tmp_path / "grants.db")
        reader = SQLiteGrantStore(tmp_path / "grants.db")
        writer.save(make_grant())
        assert "valid" == reader.revocation_state("a" * 32)

        writer.revoke("a" * 32, NOW, "carol")

        assert "revoked" == reader.revocation_state("a" * 32)
        writer.close()
        reader.close()

    def test_no_cached_state(self, tmp_path: Path) -> None:
        """The SQLite store always needs I/O, so verifiers use a thread."""
        store = SQLiteGrantStore(tmp_path / "grants.db")

        assert store.revocation_state_cached("a" * 32) is None
        store.close()

    def test_purge(self, tmp_path: Path) -> None:
        """purge deletes grants expired longer than the retention."""
        store = SQLiteGrantStore(tmp_path / "grants.db", retention=3600)
        store.save(make_grant("1" * 32, expires_at=NOW))
        store.save(make_grant("2" * 32, expires_at=NOW + 7200))

        assert 1 == store.purge(now=NOW + 3601)
        assert store.get("1" * 32) is None
        store.close()

    def test_not_a_database(self, tmp_path: Path) -> None:
        """A file that is not SQLite raises GrantStoreError naming the file."""
        path = tmp_path / "grants.db"
        path.write_bytes(b"not a database" * 100)

        with pytest.raises(GrantStoreError, match=r"grants\.db"):
            SQLiteGrantStore(path)

    def test_closed(self, tmp_path: Path) -> None:
        """A closed store raises GrantStoreError."""
        store = SQLiteGrantStore(tmp_path / "grants.db")
        store.close()

        with pytest.raises(GrantStoreError, match="closed"):
            store.get("a" * 32)

    @pytest.mark.parametrize("timeout", [0, -1, float("inf")])
    def test_invalid_timeout(self, tmp_path: Path, timeout: float) -> None:
        """The lock timeout must be positive and finite."""
        with pytest.raises(ConfigurationError):
            SQLiteGrantStore(tmp_path / "grants.db", timeout=timeout)
