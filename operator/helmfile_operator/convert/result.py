"""What a conversion gives: the documents, what could not be carried over, and notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from helmfile_operator.goyaml import GoDumper

__all__ = ["ConversionError", "ConversionResult", "Dropped"]


class ConversionError(Exception):
    """The file cannot be converted at all; the message names the file and the construct."""


@dataclass(frozen=True)
class Dropped:
    """One field of the helmfile that is not in the converted state."""

    field: str
    """Where it was, e.g. `releases[2].hooks` or `helmDefaults.kubeContext` (prefixed with the
    file, relative to the converted one, when it comes from a sub-helmfile: `sub/helmfile.yaml:
    releases[0].hooks`)."""
    why: str
    """Why it cannot be carried over."""
    instead: str
    """What to do instead."""


@dataclass
class ConversionResult:
    documents: list[dict[str, Any]]
    """The HelmfileState first, then the ConfigMaps holding values files too large to inline
    (never a Secret: credentials are left out and named in `notes`)."""
    dropped: list[Dropped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> dict[str, Any]:
        return self.documents[0]

    def to_yaml(self) -> str:
        """The documents as one multi-document YAML stream, for `kubectl apply -f -`; every
        string that helm would read as something else is quoted."""
        return yaml.dump_all(
            self.documents,
            Dumper=GoDumper,
            sort_keys=False,
            explicit_start=True,
            allow_unicode=True,
            width=100,
        )
