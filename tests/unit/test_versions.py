"""Which version a constraint picks: the table helm's own choice is checked against in
tests/integration/test_version_ranges.py (the parity test)."""

from __future__ import annotations

import pytest

from helmfile_operator.sources.versions import (
    InvalidConstraint,
    is_exact,
    newest_first,
    select_version,
)

PUBLISHED = ["0.9.0", "1.0.0", "1.0.1", "1.0.10", "1.1.0", "1.2.0-rc.1", "2.0.0", "v3.0.0-beta"]


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        (None, "2.0.0"),  # latest: no prereleases
        ("", "2.0.0"),
        ("*", "2.0.0"),
        ("1.0.x", "1.0.10"),  # numeric order, not string order
        ("1.x", "1.1.0"),
        ("^1.0.0", "1.1.0"),
        ("~1.0.0", "1.0.10"),
        (">=1.0.0, <1.1.0", "1.0.10"),  # Masterminds' comma is "and"
        (">=1.0.0 <1.1.0", "1.0.10"),
        ("1.0.0 - 1.0.5", "1.0.1"),
        ("<1.0.0 || >=2.0.0", "2.0.0"),
        ("18.x", None),
        ("1.0.1", "1.0.1"),  # an exact string match wins
    ],
)
def test_select_version(constraint: str | None, expected: str | None) -> None:
    assert select_version(constraint, PUBLISHED) == expected


def test_a_published_non_semver_version_is_only_picked_by_its_exact_name() -> None:
    assert select_version("latest", ["latest", "1.0.0"]) == "latest"
    assert select_version("*", ["latest", "1.0.0"]) == "1.0.0"


def test_garbage_is_not_a_constraint() -> None:
    with pytest.raises(InvalidConstraint, match="neither a version nor a semver range"):
        select_version(">>>1", PUBLISHED)


@pytest.mark.parametrize(
    ("version", "exact"),
    [("1.2.3", True), ("v1.2.3-rc.1+b", True), ("1.2", False), ("1.x", False), (None, False)],
)
def test_is_exact(version: str | None, exact: bool) -> None:
    assert is_exact(version) is exact


def test_newest_first_skips_what_is_not_semver() -> None:
    assert newest_first(["1.0.0", "junk", "1.0.10", "1.0.2"]) == ["1.0.10", "1.0.2", "1.0.0"]
