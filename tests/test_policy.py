# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import pytest

from zerotrust import ConfigurationError, InsecureConfigurationWarning, Policy, Segment
from zerotrust.policy import PathPattern
from zerotrust.testing import allow


def protected(name: str, paths: list[str], **options: object) -> Segment:
    return Segment(name, paths=paths, verifiers=[allow()], **options)  # type: ignore[arg-type]


class TestPathPattern:
    @pytest.mark.parametrize(
        ("pattern", "path", "expected"),
        [
            # exact
            ("/healthz", "/healthz", True),
            ("/healthz", "/healthz/", False),
            ("/healthz", "/healthzz", False),
            # prefix
            ("/api/", "/api", True),
            ("/api/", "/api/", True),
            ("/api/", "/api/items/1", True),
            ("/api/", "/apiary", False),
            ("/", "/anything", True),
            # glob
            ("/users/*/profile", "/users/42/profile", True),
            ("/users/*/profile", "/users//profile", False),
            ("/users/*/profile", "/users/42/43/profile", False),
            ("/files/**", "/files", True),
            ("/files/**", "/files/a/b/c", True),
            ("/files/**", "/filesystem", False),
        ],
    )
    def test_matches(self, pattern: str, path: str, expected: bool) -> None:
        """Exact, prefix and glob rules match on segment boundaries."""
        assert expected == PathPattern(pattern).matches(path)

    @pytest.mark.parametrize(
        "pattern", ["", "api/", "/api//x", "/api/../admin", "/./x", "/a*b", "/**/x", 7]
    )
    def test_rejects_invalid(self, pattern: object) -> None:
        """A rule that is relative, unnormalised or has a partial wildcard fails at construction."""
        with pytest.raises(ConfigurationError):
            PathPattern(pattern)  # type: ignore[arg-type]


class TestSegment:
    def test_protected_needs_verifier(self) -> None:
        """A non-public segment without verifiers would deny everything, so it is an error."""
        with pytest.raises(ConfigurationError, match="'api' is not public"):
            Segment("api", paths=["/api/"])

    def test_public_rejects_requirements(self) -> None:
        """A public segment cannot require scopes or roles."""
        with pytest.raises(ConfigurationError, match="public"):
            Segment("health", paths=["/healthz"], public=True, scopes=["read"])

    @pytest.mark.parametrize(
        ("options", "fragment"),
        [
            ({"paths": []}, "at least one path"),
            ({"paths": ["/x"], "mode": "audit"}, "'audit'"),
            ({"paths": ["/x"], "methods": ["GE T"]}, "'GE T'"),
            ({"paths": ["/x"], "methods": []}, "must not be empty"),
            ({"paths": ["/x"], "hosts": ["bad host"]}, "'bad host'"),
            ({"paths": ["/x"], "scopes": {"FETCH!": ["a"]}}, "'FETCH!'"),
            ({"paths": ["/x"], "scopes": [""]}, "''"),
            ({"paths": ["/x"], "roles": [" admin"]}, "' admin'"),
            ({"paths": ["/x"], "public": "yes"}, "'yes'"),
        ],
    )
    def test_invalid_options(self, options: dict[str, object], fragment: str) -> None:
        """Each invalid option fails at construction with a message quoting the value."""
        options.setdefault("verifiers", [allow()])
        with pytest.raises(ConfigurationError) as caught:
            Segment("seg", **options)  # type: ignore[arg-type]

        assert fragment in str(caught.value)

    @pytest.mark.parametrize("name", ["", "has space", "x" * 65, None])
    def test_invalid_name(self, name: object) -> None:
        """Segment names are short identifiers."""
        with pytest.raises(ConfigurationError):
            Segment(name, paths=["/x"], public=True)  # type: ignore[arg-type]

    def test_not_a_verifier(self) -> None:
        """Anything but a Verifier instance in verifiers fails at construction."""
        with pytest.raises(ConfigurationError, match="not a zerotrust Verifier"):
            Segment("api", paths=["/api/"], verifiers=[object()])  # type: ignore[list-item]

    def test_duplicate_verifier_names(self) -> None:
        """Two verifiers with one name would be indistinguishable in events."""
        with pytest.raises(ConfigurationError, match="two verifiers named 'allow'"):
            Segment("api", paths=["/api/"], verifiers=[allow(), allow()])

    def test_monitor_warns(self) -> None:
        """Monitor mode is legal but weakens enforcement, so it warns."""
        with pytest.warns(InsecureConfigurationWarning, match="monitor mode"):
            protected("api", ["/api/"], mode="monitor")

    def test_get_implies_head(self) -> None:
        """A segment for GET also covers HEAD, which servers answer like GET."""
        segment = protected("api", ["/api/"], methods=["get"])

        assert frozenset({"GET", "HEAD"}) == segment.methods

    @pytest.mark.parametrize(
        ("method", "expected"),
        [
            ("GET", frozenset({"read"})),
            ("HEAD", frozenset({"read"})),
            ("POST", frozenset({"write"})),
            ("DELETE", None),
        ],
    )
    def test_required_scopes_by_method(self, method: str, expected: frozenset[str] | None) -> None:
        """Unlisted methods are denied (None); HEAD falls back to GET."""
        segment = protected("api", ["/api/"], scopes={"GET": ["read"], "post": ["write"]})

        assert expected == segment.required_scopes(method)

    def test_required_scopes_default(self) -> None:
        """A '*' entry is the default for unlisted methods."""
        segment = protected("api", ["/api/"], scopes={"GET": ["read"], "*": ["admin"]})

        assert frozenset({"admin"}) == segment.required_scopes("PATCH")

    def test_required_scopes_list(self) -> None:
        """A plain list applies to every method."""
        segment = protected("api", ["/api/"], scopes=["read"])

        assert frozenset({"read"}) == segment.required_scopes("OPTIONS")


class TestPolicy:
    def test_empty(self) -> None:
        """A policy without segments is a configuration error."""
        with pytest.raises(ConfigurationError, match="at least one segment"):
            Policy([])

    def test_duplicate_names(self) -> None:
        """Segment names identify segments in events, so they are unique."""
        with pytest.raises(ConfigurationError, match="'api'"):
            Policy([protected("api", ["/a/"]), protected("api", ["/b/"])])

    def test_overlap_equal_specificity(self) -> None:
        """Two segments claiming the same rule with nothing to tell them apart are an error."""
        with pytest.raises(ConfigurationError, match="both claim path '/api/'"):
            Policy([protected("one", ["/api/"]), protected("two", ["/api/"])])

    def test_overlap_split_by_method(self) -> None:
        """The same rule split by disjoint methods is fine."""
        policy = Policy(
            [
                protected("reads", ["/api/"], methods=["GET"]),
                protected("writes", ["/api/"], methods=["POST"]),
            ]
        )

        assert "writes" == policy.match("/api/x", method="POST").name  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        ("path", "method", "host", "expected"),
        [
            ("/healthz", "GET", "", "health"),
            ("/api/items", "GET", "", "api"),
            ("/api/admin/x", "GET", "", "api-admin"),
            ("/api/users/7/profile", "GET", "", "profile"),
            ("/api/items", "DELETE", "", "api-delete"),
            ("/api/items", "GET", "internal.example.com", "internal"),
            ("/api/items", "GET", "a.b.internal.example.com", "internal"),
            ("/api/items", "GET", "example.com", "api"),
            ("/nothing", "GET", "", None),
            ("/apiary", "GET", "", None),
        ],
    )
    def test_most_specific_wins(
        self, path: str, method: str, host: str, expected: str | None
    ) -> None:
        """Exact beats glob beats prefix; longer, host- and method-specific rules win ties."""
        policy = Policy(
            [
                Segment("health", paths=["/healthz"], public=True),
                protected("api", ["/api/"]),
                protected("api-admin", ["/api/admin/"]),
                protected("profile", ["/api/users/*/profile"]),
                protected("api-delete", ["/api/"], methods=["DELETE"]),
                protected("internal", ["/api/"], hosts=["*.example.com"]),
            ]
        )

        segment = policy.match(path, method=method, host=host)

        assert expected == (segment.name if segment is not None else None)

    def test_accepts_only_segments(self) -> None:
        """A policy entry that is not a Segment fails at construction."""
        with pytest.raises(ConfigurationError, match="not a Segment"):
            Policy(["/api/"])  # type: ignore[list-item]

    def test_iterates_segments(self) -> None:
        """A policy is a sized iterable of its segments, in the order given."""
        segments = [protected("a", ["/a/"]), protected("b", ["/b/"])]
        policy = Policy(segments)

        assert 2 == len(policy)
        assert segments == list(policy)


class TestPolicyShortcuts:
    def test_single_segment(self) -> None:
        """A single Segment is accepted where a list is expected."""
        segment = Segment("health", paths=["/healthz"], public=True)

        assert [segment] == list(Policy(segment))
