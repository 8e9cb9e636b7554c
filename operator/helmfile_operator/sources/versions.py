"""Which published version a chart version constraint picks, the way helm picks it (pure).

helm (Masterminds/semver) first takes a version whose string equals the constraint, then the
highest version that satisfies it; no constraint means `*`, the newest without a prerelease. A
version that is not semver is never picked by a range. The constraint grammar (`1.4.x`, `^1.2`,
`~1.2.3`, `>=1.0 <2.0`, `>=1.0, <2.0`, `1.0 - 1.4`, `||`) is node-semver's, which reads the same
syntax; Masterminds' `,` (and) becomes node-semver's space.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import nodesemver

# A version, not a constraint: helm passes it through, so there is nothing to resolve.
_EXACT = re.compile(
    r"^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)


class InvalidConstraint(ValueError):
    """The constraint is not semver range syntax helm would accept."""


def is_exact(version: str | None) -> bool:
    """`1.2.3`, `v1.2.3-rc.1`: one version. None (latest) and ranges are not."""
    return version is not None and _EXACT.match(version.strip()) is not None


def _constraint(version: str | None) -> str:
    text = (version or "").strip() or "*"
    return re.sub(r"\s*,\s*", " ", text)


def validate_constraint(version: str | None) -> None:
    """Raise InvalidConstraint when `version` is neither a version nor a range."""
    if is_exact(version):
        return
    try:
        nodesemver.make_range(_constraint(version), loose=True)
    except (ValueError, TypeError):
        raise InvalidConstraint(
            f"{version!r} is neither a version nor a semver range (e.g. `1.2.3`, `1.4.x`, "
            "`^1.2`, `>=1.0 <2.0`)"
        ) from None


def select_version(version: str | None, available: Iterable[str]) -> str | None:
    """The version helm installs for `version` among `available`, or None when none fits."""
    candidates = list(dict.fromkeys(available))
    if version and version in candidates:
        return version
    validate_constraint(version)
    constraint = _constraint(version)
    matching = [
        candidate
        for candidate in candidates
        if _is_semver(candidate) and nodesemver.satisfies(candidate, constraint, loose=True)
    ]
    return max(matching, key=functools.cmp_to_key(_compare)) if matching else None


def newest_first(available: Iterable[str]) -> list[str]:
    """The semver versions of `available`, newest first (for messages)."""
    valid = [v for v in dict.fromkeys(available) if _is_semver(v)]
    return sorted(valid, key=functools.cmp_to_key(_compare), reverse=True)


def _compare(left: str, right: str) -> int:
    return int(nodesemver.compare(left, right, loose=True))


def _is_semver(candidate: str) -> bool:
    try:
        nodesemver.make_semver(candidate, loose=True)
    except (ValueError, TypeError):
        return False
    return True
