# SPDX-License-Identifier: Apache-2.0
"""Small MaxMind DB files with invented data, in the GeoLite2 Country and ASN record layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# Invented assignments: these records do not say who really holds these networks.
COUNTRY_RECORDS: dict[str, dict[str, Any]] = {
    "81.0.0.0/16": {"country": {"iso_code": "DE"}, "continent": {"code": "EU"}},
    "8.8.8.0/24": {"country": {"iso_code": "US"}, "continent": {"code": "NA"}},
    "2003::/19": {"country": {"iso_code": "DE"}, "continent": {"code": "EU"}},
    "2.2.0.0/16": {"country": {"iso_code": "RU"}, "continent": {"code": "EU"}},
    # A network that MaxMind places only on a continent.
    "5.0.0.0/16": {"country": {"iso_code": "EU"}},
    "6.0.0.0/16": {"continent": {"code": "EU"}},
    # A corrupt record.
    "7.0.0.0/16": {"country": {"iso_code": 7}},
    # An own network mapped in a private database, for internal="lookup".
    "10.0.0.0/8": {"country": {"iso_code": "DE"}},
}

ASN_RECORDS: dict[str, dict[str, Any]] = {
    "81.0.0.0/16": {
        "autonomous_system_number": 3320,
        "autonomous_system_organization": "Deutsche Telekom AG",
    },
    "8.8.8.0/24": {
        "autonomous_system_number": 15169,
        "autonomous_system_organization": "GOOGLE",
    },
    "2003::/19": {
        "autonomous_system_number": 3320,
        "autonomous_system_organization": "Deutsche Telekom AG",
    },
    "2.2.0.0/16": {
        "autonomous_system_number": 64500,
        "autonomous_system_organization": "Example Hosting",
    },
    "6.0.0.0/16": {"autonomous_system_organization": "Org Without Number"},
    "7.0.0.0/16": {"autonomous_system_number": "3320"},
}


def write_mmdb(
    path: Path, records: dict[str, dict[str, Any]], *, database_type: str, ip_version: int = 6
) -> Path:
    """Write ``records`` (CIDR to record) as a MaxMind DB file and return its path."""
    writer = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        languages=["en"],
        description="zerotrust test data",
    )
    for cidr, record in records.items():
        if ip_version == 4 and ":" in cidr:
            continue
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))

    return path


def write_country_db(directory: Path, *, ip_version: int = 6) -> Path:
    name = f"country-ipv{ip_version}.mmdb"
    return write_mmdb(
        directory / name, COUNTRY_RECORDS, database_type="GeoLite2-Country", ip_version=ip_version
    )


def write_asn_db(directory: Path) -> Path:
    return write_mmdb(directory / "asn.mmdb", ASN_RECORDS, database_type="GeoLite2-ASN")
