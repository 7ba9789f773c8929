# SPDX-License-Identifier: Apache-2.0
"""Approximate country centroids by ISO 3166-1 alpha-2 code, and great-circle distances."""

from __future__ import annotations

import math

__all__ = ["COUNTRY_CENTROIDS", "country_distance_km", "haversine_km"]

EARTH_RADIUS_KM = 6371.0

# Rough geographic centres in decimal degrees, rounded to about a degree. They are good enough
# to tell that two countries are thousands of kilometres apart, not to measure a trip: for a
# large country the centroid can be 1,500 km or more from where its users live.
COUNTRY_CENTROIDS: dict[str, tuple[float, float]] = {
    "AE": (24.0, 54.0),
    "AR": (-34.0, -64.0),
    "AT": (47.5, 14.5),
    "AU": (-25.0, 134.0),
    "BD": (24.0, 90.0),
    "BE": (50.8, 4.5),
    "BG": (42.7, 25.5),
    "BR": (-10.0, -52.0),
    "BY": (53.5, 28.0),
    "CA": (56.0, -106.0),
    "CH": (46.8, 8.2),
    "CL": (-33.0, -71.0),
    "CN": (35.0, 104.0),
    "CO": (4.0, -73.0),
    "CZ": (49.8, 15.5),
    "DE": (51.2, 10.4),
    "DK": (56.0, 10.0),
    "DZ": (28.0, 2.6),
    "EE": (58.6, 25.0),
    "EG": (26.8, 30.8),
    "ES": (40.4, -3.7),
    "ET": (9.1, 40.5),
    "FI": (64.0, 26.0),
    "FR": (46.6, 2.4),
    "GB": (54.0, -2.5),
    "GH": (7.9, -1.0),
    "GR": (39.1, 22.0),
    "HK": (22.3, 114.2),
    "HR": (45.1, 15.2),
    "HU": (47.2, 19.5),
    "ID": (-2.5, 118.0),
    "IE": (53.4, -8.2),
    "IL": (31.0, 34.9),
    "IN": (22.0, 79.0),
    "IQ": (33.2, 43.7),
    "IR": (32.4, 53.7),
    "IS": (65.0, -18.6),
    "IT": (42.8, 12.6),
    "JP": (36.2, 138.3),
    "KE": (0.0, 38.0),
    "KR": (36.5, 127.9),
    "KZ": (48.0, 67.0),
    "LT": (55.2, 23.9),
    "LU": (49.8, 6.1),
    "LV": (56.9, 24.6),
    "MA": (31.8, -7.1),
    "MX": (23.6, -102.5),
    "MY": (4.2, 102.0),
    "NG": (9.1, 8.7),
    "NL": (52.1, 5.3),
    "NO": (61.0, 9.0),
    "NZ": (-41.0, 174.0),
    "PE": (-9.2, -75.0),
    "PH": (12.9, 122.0),
    "PK": (30.4, 69.3),
    "PL": (52.0, 19.1),
    "PT": (39.6, -8.0),
    "QA": (25.3, 51.2),
    "RO": (45.9, 25.0),
    "RS": (44.0, 21.0),
    "RU": (61.5, 105.3),
    "SA": (24.0, 45.0),
    "SE": (62.0, 15.0),
    "SG": (1.35, 103.8),
    "SI": (46.1, 14.8),
    "SK": (48.7, 19.7),
    "TH": (15.9, 101.0),
    "TR": (39.0, 35.2),
    "TW": (23.7, 121.0),
    "UA": (49.0, 31.2),
    "US": (39.8, -98.6),
    "UY": (-32.8, -56.0),
    "VE": (7.0, -66.0),
    "VN": (16.0, 107.8),
    "ZA": (-29.0, 24.0),
}


def haversine_km(first: tuple[float, float], second: tuple[float, float]) -> float:
    """Return the great-circle distance in kilometres between two (latitude, longitude) points."""
    lat1, lon1 = map(math.radians, first)
    lat2, lon2 = map(math.radians, second)
    half_chord = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )

    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, half_chord)))


def country_distance_km(first: str, second: str) -> float | None:
    """Return the distance between two countries' centroids, or ``None`` if either is unknown."""
    first_point = COUNTRY_CENTROIDS.get(first.upper())
    second_point = COUNTRY_CENTROIDS.get(second.upper())
    if first_point is None or second_point is None:
        return None

    return haversine_km(first_point, second_point)
