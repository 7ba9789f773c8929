# SPDX-License-Identifier: Apache-2.0
"""Find settings of a loaded policy that are legal but risky, for ``zerotrust check``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import InsecureConfigurationWarning
from ._source import KeyPath, LineIndex, PolicyWarning, format_key_path

if TYPE_CHECKING:
    from ..policy import PathPattern, Segment
    from ..verifiers import Verifier
    from ._loader import LoadedPolicy

__all__ = ["review_policy"]

# RFC 7518, section 3.2: an HMAC key must be at least as long as the hash output.
_HMAC_HASH_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def review_policy(loaded: LoadedPolicy) -> list[PolicyWarning]:
    """
    Return warnings about settings that construction accepts silently.

    The warnings that constructors emit themselves (monitor mode, a leeway over a minute,
    trusting every address) are in ``loaded.warnings`` already and are not repeated.
    """
    try:
        lines = LineIndex(Path(loaded.path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        lines = LineIndex("")
    reviewer = _Reviewer(loaded, lines)
    reviewer.review()

    return reviewer.found


class _Reviewer:
    def __init__(self, loaded: LoadedPolicy, lines: LineIndex) -> None:
        self.loaded = loaded
        self.lines = lines
        self.found: list[PolicyWarning] = []
        self.names = {id(verifier): name for name, verifier in loaded.verifiers.items()}

    def warn(self, path: KeyPath, message: str) -> None:
        self.found.append(
            PolicyWarning(
                str(self.loaded.path),
                format_key_path(path),
                self.lines.line_of(path),
                message,
                InsecureConfigurationWarning,
            )
        )

    def review(self) -> None:
        segments = self.loaded.policy.segments
        used: set[int] = set()
        for index, segment in enumerate(segments):
            used.update(id(verifier) for verifier in segment.verifiers)
            self.review_identity(index, segment)
            if segment.public:
                self.review_public_overlap(index, segment)
        for name, verifier in self.loaded.verifiers.items():
            if id(verifier) not in used:
                self.warn(
                    ("verifiers", name), f"verifier {name!r} is declared but no segment uses it"
                )
            self.review_hmac(("verifiers", name), verifier)
        if self.loaded.monitor is None and any(
            type(verifier).__name__ == "RiskVerifier"
            for segment in segments
            for verifier in segment.verifiers
        ):
            self.warn(
                ("monitor",),
                "a risk verifier is used but the file has no [monitor] table, so no detector "
                "raises the signals it reads: add [monitor] with detectors",
            )

    def review_identity(self, index: int, segment: Segment) -> None:
        if segment.public or any(verifier.kind == "identity" for verifier in segment.verifiers):
            return
        self.warn(
            ("segments", index, "verifiers"),
            f"segment {segment.name!r} has no identity verifier (jwt, or workload with "
            "identity = true), so its requests are denied with identity_missing unless "
            "another verifier establishes a principal",
        )

    def review_public_overlap(self, index: int, public: Segment) -> None:
        policy = self.loaded.policy
        for other in policy.segments:
            if other.public or not _may_share(public, other):
                continue
            for sample in _shared_paths(public.paths, other.paths):
                method = _common_method(public, other)
                host = _common_host(public, other)
                chosen = policy.match(sample, method=method, host=host)
                winner = chosen.name if chosen is not None else "no segment"
                self.warn(
                    ("segments", index, "paths"),
                    f"public segment {public.name!r} overlaps protected segment "
                    f"{other.name!r}: a request for {sample!r} matches both, and the policy "
                    f"sends it to {winner!r}. Make sure the public rule is meant to cover it",
                )
                break

    def review_hmac(self, path: KeyPath, verifier: Verifier) -> None:
        key_set = getattr(verifier, "key_set", None)
        # NOTE: reads the private index of StaticKeySet; a remote key set never contains HMAC keys.
        index = getattr(key_set, "_index", None)
        if not isinstance(index, dict):
            return
        for (_kid, algorithm), keys in index.items():
            minimum = _HMAC_HASH_BYTES.get(algorithm)
            if minimum is None:
                continue
            for key in keys:
                secret = getattr(key, "key", b"")
                if isinstance(secret, bytes) and len(secret) < minimum:
                    self.warn(
                        (*path, "keys"),
                        f"the HMAC secret has {len(secret)} bytes, less than the {minimum} "
                        f"bytes of the {algorithm} hash (RFC 7518, section 3.2): use a longer "
                        "random secret",
                    )
                    return


def _may_share(first: Segment, second: Segment) -> bool:
    if (
        first.methods is not None
        and second.methods is not None
        and not first.methods & second.methods
    ):
        return False
    if first.hosts is None or second.hosts is None:
        return True
    return bool(first.hosts & second.hosts) or any(
        host.startswith("*.") for host in first.hosts | second.hosts
    )


def _common_method(first: Segment, second: Segment) -> str:
    methods = (first.methods or {"GET"}) & (second.methods or first.methods or {"GET"})
    return sorted(methods)[0] if methods else "GET"


def _common_host(first: Segment, second: Segment) -> str:
    for hosts in (first.hosts, second.hosts):
        for host in sorted(hosts or ()):
            if not host.startswith("*."):
                return host
            return "a" + host[1:]
    return ""


def _examples(pattern: PathPattern) -> Iterator[str]:
    """Yield paths the rule matches: the rule itself, and one level below a prefix or glob."""
    text = pattern.pattern
    if pattern.kind == "exact":
        yield text
    elif pattern.kind == "prefix":
        yield text.rstrip("/") or "/"
        yield text + "x"
    else:
        filled = text.replace("/**", "/x/y").replace("*", "x")
        yield filled
        if text.endswith("/**"):
            yield text[: -len("/**")] or "/"


def _shared_paths(first: tuple[PathPattern, ...], second: tuple[PathPattern, ...]) -> Iterator[str]:
    for one in first:
        for two in second:
            for sample in (*_examples(one), *_examples(two)):
                if one.matches(sample) and two.matches(sample):
                    yield sample
