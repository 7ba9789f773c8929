# SPDX-License-Identifier: Apache-2.0
"""The country codes that geo rules accept: ISO 3166-1 alpha-2, plus XK for Kosovo."""

from __future__ import annotations

__all__ = ["COUNTRY_CODES"]

# The 249 officially assigned ISO 3166-1 alpha-2 codes as of ISO/TC 46 N1127 (2024-02-29), as
# listed in the tz database's iso3166.tab. XK is user-assigned, but GeoLite2 data uses it for
# Kosovo. Checking against the assigned list rejects look-alikes such as "UK" (use GB) or
# "EU" at construction, where a typo in a deny-list would otherwise never match.
COUNTRY_CODES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    XK
    """.split()  # noqa: SIM905 -- a block of codes is easier to check against ISO 3166-1
)
