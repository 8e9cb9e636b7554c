"""What went wrong in a helm run: a kind the controllers act on, and a message a human can act on.

`classify` maps helm's stderr (Helm 3 and Helm 4 wording) to a `HelmErrorKind`. The message keeps
only helm's `Error:` line(s), collapsed to one line, scrubbed of URL credentials and of any string
the caller asks to redact (in each encoding a message may quote it in: `secret_forms`),
truncated, and followed by a hint. helm's stdout is never used: with
`--output json` it holds the release's values.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from enum import StrEnum

MESSAGE_MAX = 500
_SUMMARY_MAX = 360
REDACTED = "***"


class HelmErrorKind(StrEnum):
    CHART_NOT_FOUND = "ChartNotFound"
    VERSION_NOT_FOUND = "VersionNotFound"
    REPOSITORY_UNREACHABLE = "RepositoryUnreachable"
    REPOSITORY_AUTH_FAILED = "RepositoryAuthFailed"
    RENDER_FAILED = "RenderFailed"
    TIMEOUT = "Timeout"
    CONFLICT = "Conflict"
    LOCKED = "Locked"
    CONNECTION = "Connection"
    FORBIDDEN = "Forbidden"
    RELEASE_NOT_FOUND = "ReleaseNotFound"
    INVALID_VALUES = "InvalidValues"
    TEST_FAILED = "TestFailed"
    UNKNOWN = "Unknown"


RETRYABLE_KINDS = frozenset(
    {
        HelmErrorKind.TIMEOUT,
        HelmErrorKind.LOCKED,
        HelmErrorKind.CONNECTION,
        HelmErrorKind.REPOSITORY_UNREACHABLE,
        HelmErrorKind.TEST_FAILED,
        HelmErrorKind.UNKNOWN,
    }
)

HINTS: dict[HelmErrorKind, str] = {
    HelmErrorKind.CHART_NOT_FOUND: "check spec.chart.name and spec.chart.repository.url",
    HelmErrorKind.VERSION_NOT_FOUND: (
        "check spec.chart.version; available versions are listed by "
        "`helm search repo --versions` (or the registry's tags for oci://)"
    ),
    HelmErrorKind.REPOSITORY_UNREACHABLE: (
        "check spec.chart.repository.url, network access, TLS (caSecretRef) and credentials "
        "(secretRef); will retry"
    ),
    HelmErrorKind.RENDER_FAILED: (
        "the chart did not render or the API server rejected its manifests; "
        "try `helm template` with the same values"
    ),
    HelmErrorKind.TIMEOUT: (
        "resources were not ready within the helm timeout; check the workloads' events "
        "or raise spec.helm.timeout"
    ),
    HelmErrorKind.CONFLICT: (
        "an object of the release is owned by something else or cannot be changed in place; "
        "adopt or delete it"
    ),
    HelmErrorKind.LOCKED: (
        "another helm operation on the release is running or was interrupted (status pending-*); "
        "will retry"
    ),
    HelmErrorKind.CONNECTION: "the Kubernetes API server was unreachable; will retry",
    HelmErrorKind.REPOSITORY_AUTH_FAILED: (
        "the repository refused the credentials: check spec.chart.repository.secretRef"
    ),
    HelmErrorKind.FORBIDDEN: (
        "grant the service account (serviceAccountName) the RBAC permissions named above"
    ),
    HelmErrorKind.RELEASE_NOT_FOUND: "the release does not exist (or has no deployed revision)",
    HelmErrorKind.INVALID_VALUES: "the values do not fit the chart (values.schema.json)",
    HelmErrorKind.TEST_FAILED: (
        "a test hook of the chart (`helm.sh/hook: test`) failed: read its logs "
        "(`kubectl logs`); set helm.test.ignoreFailures to report without failing the release"
    ),
    HelmErrorKind.UNKNOWN: "will retry",
}


class HelmError(Exception):
    """A failed helm run. `message` is safe to put in a status condition or a log line."""

    def __init__(
        self,
        kind: HelmErrorKind,
        command: str,
        message: str,
        *,
        returncode: int | None = None,
    ) -> None:
        super().__init__(kind, command, message)
        self.kind = kind
        self.command = command
        self.message = message
        self.returncode = returncode

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    def __str__(self) -> str:
        return f"helm {self.command} failed ({self.kind}): {self.message}"

    def __repr__(self) -> str:
        return f"HelmError(kind={self.kind!r}, command={self.command!r}, message={self.message!r})"


# --- classification -----------------------------------------------------------------------------

_Rule = tuple[HelmErrorKind, re.Pattern[str]]


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.DOTALL)


# First match wins: specific wordings before the generic ones they contain.
_RULES: list[_Rule] = [
    # A pending release is helm's lock; nothing else says "is in progress".
    (HelmErrorKind.LOCKED, _rx(r"another operation \(install/upgrade/rollback\) is in progress")),
    # Kinds the cluster does not know (yet): a CRD may come with another release. Retried.
    (HelmErrorKind.UNKNOWN, _rx(r"ensure CRDs are installed first|no matches for kind")),
    # Objects that exist outside the release, or cannot be changed in place.
    (HelmErrorKind.CONFLICT, _rx(r"rendered manifests contain a resource that already exists")),
    (HelmErrorKind.CONFLICT, _rx(r"cannot be imported into the current release")),
    (HelmErrorKind.CONFLICT, _rx(r"invalid ownership metadata")),
    (HelmErrorKind.CONFLICT, _rx(r"cannot re-use a name that is still in use")),
    (HelmErrorKind.CONFLICT, _rx(r"apply failed with \d+ conflicts?")),
    (HelmErrorKind.CONFLICT, _rx(r"field is immutable")),
    # Releases.
    (HelmErrorKind.RELEASE_NOT_FOUND, _rx(r"release: not found")),
    (HelmErrorKind.RELEASE_NOT_FOUND, _rx(r"has no deployed releases")),
    (HelmErrorKind.RELEASE_NOT_FOUND, _rx(r"release has no \d+ version")),
    # Charts and versions (http index, oci tags).
    (HelmErrorKind.VERSION_NOT_FOUND, _rx(r"no chart version found")),
    (HelmErrorKind.VERSION_NOT_FOUND, _rx(r"chart \"[^\"]*\" version \"[^\"]*\" not found")),
    (HelmErrorKind.VERSION_NOT_FOUND, _rx(r"could not locate a version matching")),
    (HelmErrorKind.VERSION_NOT_FOUND, _rx(r"improper constraint|invalid semantic version")),
    (HelmErrorKind.VERSION_NOT_FOUND, _rx(r"manifest unknown")),
    (HelmErrorKind.CHART_NOT_FOUND, _rx(r"no chart name found")),
    (HelmErrorKind.CHART_NOT_FOUND, _rx(r"chart \"[^\"]*\" not found in .* repository")),
    (HelmErrorKind.CHART_NOT_FOUND, _rx(r"unable to locate any tags in provided repository")),
    (HelmErrorKind.CHART_NOT_FOUND, _rx(r"name unknown|repository name not known")),
    (HelmErrorKind.CHART_NOT_FOUND, _rx(r"non-absolute URLs should be in form of")),
    (HelmErrorKind.CHART_NOT_FOUND, _rx(r"path \"[^\"]*\" not found")),
    (HelmErrorKind.CHART_NOT_FOUND, _rx(r"failed to fetch \S+\.tgz\s*:\s*404")),
    # The Kubernetes API: unreachable, credentials refused.
    (HelmErrorKind.CONNECTION, _rx(r"kubernetes cluster unreachable")),
    (HelmErrorKind.CONNECTION, _rx(r"unable to connect to the server")),
    # Repositories and registries.
    (HelmErrorKind.REPOSITORY_UNREACHABLE, _rx(r"is not a valid chart repository or cannot be")),
    (HelmErrorKind.REPOSITORY_UNREACHABLE, _rx(r"failed to fetch \S+")),
    (
        HelmErrorKind.REPOSITORY_UNREACHABLE,
        _rx(r"failed to authorize|authenticating to|login attempt"),
    ),
    (HelmErrorKind.REPOSITORY_UNREACHABLE, _rx(r"failed to perform \"FetchReference\"")),
    (HelmErrorKind.REPOSITORY_UNREACHABLE, _rx(r"failed to download")),
    (HelmErrorKind.REPOSITORY_UNREACHABLE, _rx(r"server gave HTTP response to HTTPS client")),
    (HelmErrorKind.REPOSITORY_UNREACHABLE, _rx(r"x509: |tls: ")),
    # Values that do not fit the chart.
    (HelmErrorKind.INVALID_VALUES, _rx(r"values don't meet the specifications of the schema")),
    (HelmErrorKind.INVALID_VALUES, _rx(r"failed to parse \S+: ")),
    # Templates and manifests.
    (HelmErrorKind.RENDER_FAILED, _rx(r"parse error at|YAML parse error|execution error at")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"template: |error calling |nil pointer evaluating")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"function \"[^\"]*\" not defined|wrong type for value")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"\bexecuting \"[^\"]*\" at <")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"chart requires kubeVersion")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"error validating data|error validating \"")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"unable to build kubernetes objects from")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"failed to create typed patch object")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"field not declared in schema")),
    (HelmErrorKind.RENDER_FAILED, _rx(r"release name is invalid|chart metadata .* is required")),
    # Waiting: helm 3's poller, helm 4's watcher ("... not ready. status: ...").
    (HelmErrorKind.TIMEOUT, _rx(r"context deadline exceeded|timed out waiting for the condition")),
    (HelmErrorKind.TIMEOUT, _rx(r"timeout awaiting|request timed out")),
    # Quota is "forbidden" in wording but passes when usage drops: retried as UNKNOWN.
    (HelmErrorKind.UNKNOWN, _rx(r"exceeded quota")),
    (HelmErrorKind.FORBIDDEN, _rx(r"is forbidden|forbidden: User ")),
    # An object the API server refused (after the more specific wordings above).
    (HelmErrorKind.RENDER_FAILED, _rx(r"\bis invalid: ")),
]

# A network error mentions the URL it failed on; API server paths mean the cluster, others a repo.
_NETWORK = re.compile(
    r"dial tcp|connection refused|no such host|connection reset|i/o timeout|TLS handshake|\bEOF\b"
)
_API_URL = _rx(r"\"https?://[^\"]*/(api|apis|version|openapi)(/|\?|\")")

_NO_KIND = _rx(r"ensure CRDs are installed first|no matches for kind")
_NO_NAMESPACE = _rx(r"namespaces \"[^\"]+\" not found")

_ERROR_LINE = re.compile(r"^\s*Error:\s*", re.IGNORECASE)
_NOISE = re.compile(r"^\s*(Use --debug flag|Usage:|WARNING: )", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@\"']+:[^/\s@\"']*@", re.I)
_SECRET_ASSIGN = re.compile(r"(?P<key>(?:password|passwd|token|secret)[\"']?\s*[:=]\s*)\S+", re.I)
_SPACE = re.compile(r"\s+")


def classify(
    command: str,
    stderr: str,
    returncode: int,
    timed_out: bool,
    *,
    redact: Iterable[str] = (),
) -> HelmError:
    """The HelmError for a helm run that failed (`returncode != 0`) or was killed on timeout.

    `redact` lists strings (values read from Secrets, passwords) that must not reach the message.
    """
    summary = summarize(stderr, redact=redact)
    kind = HelmErrorKind.UNKNOWN
    if timed_out:
        kind = HelmErrorKind.TIMEOUT
        summary = "helm did not finish in time and was killed" + (f": {summary}" if summary else "")
    else:
        for rule_kind, pattern in _RULES:
            if pattern.search(stderr):
                kind = rule_kind
                break
        else:
            if _NETWORK.search(stderr):
                api = _API_URL.search(stderr) is not None
                kind = HelmErrorKind.CONNECTION if api else HelmErrorKind.REPOSITORY_UNREACHABLE
        if not summary:
            summary = (
                f"helm was killed by signal {-returncode}"
                if returncode < 0
                else f"helm exited with code {returncode} and no error message"
            )
    if kind is HelmErrorKind.REPOSITORY_UNREACHABLE and re.search(r"\b40[13]\b", stderr):
        # Refused credentials stay refused until someone fixes them: not worth a fast retry.
        kind = HelmErrorKind.REPOSITORY_AUTH_FAILED
    if kind is HelmErrorKind.UNKNOWN and _NO_KIND.search(stderr):
        hint = "a kind of the chart is not known to the cluster; install its CRDs first (needs)"
    elif kind is HelmErrorKind.UNKNOWN and _NO_NAMESPACE.search(stderr):
        hint = "the target namespace does not exist: create it or set helm.createNamespace"
    else:
        hint = HINTS[kind]
    return HelmError(kind, command, f"{summary} ({hint})", returncode=returncode)


def summarize(stderr: str, *, redact: Iterable[str] = ()) -> str:
    """helm's error, one line: from the first `Error:` line on (or the last lines), redacted."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if _ERROR_LINE.match(line)), None)
    kept = lines[start:] if start is not None else lines[-3:]
    kept = [_ERROR_LINE.sub("", line, count=1) for line in kept if not _NOISE.match(line)]
    text = _SPACE.sub(" ", " ".join(kept)).strip()
    text = redact_text(text, redact)
    if len(text) > _SUMMARY_MAX:
        # Head and tail: helm puts the cause first and the verdict ("field is immutable") last.
        head, tail = _SUMMARY_MAX * 2 // 3, _SUMMARY_MAX // 3 - 3
        text = f"{text[:head].rstrip()} … {text[-tail:].lstrip()}"
    return text


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Drop URL user-info, `password=...`-like pairs, and every given secret string in each form
    it may take in an error message (`secret_forms`)."""
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    text = _SECRET_ASSIGN.sub(lambda m: m.group("key") + REDACTED, text)
    return redact_forms(text, all_secret_forms(secrets))


def all_secret_forms(secrets: Iterable[str]) -> list[str]:
    """Every form of every secret (`secret_forms`), longest first: a form containing another is
    replaced whole. Computed once for many texts."""
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_forms(secret)
    return sorted(forms, key=lambda f: (-len(f), f))


def redact_forms(text: str, forms: Iterable[str]) -> str:
    """`text` with each of `forms` (from `all_secret_forms`) replaced."""
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


# --- the forms of a secret ----------------------------------------------------------------------

# Shorter strings would scrub ordinary words (the values of a Secret include "true", "yes", ...).
MIN_SECRET_CHARS = 4
# A line of a multi-line secret (a PEM key) is redacted on its own from this length: messages
# that quote one line of it, or re-wrap it, must not leak the rest.
MIN_SECRET_LINE_CHARS = 8
_PEM_ARMOR = re.compile(r"-----(BEGIN|END) [A-Z0-9 ]+-----")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}
# encoding/json escapes these on top of JSON's own (HTML safety, JavaScript line terminators).
_GO_JSON_EXTRA = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def secret_forms(secret: str) -> set[str]:
    """Every form of `secret` an error message may quote: as is, Go-quoted (`strconv.Quote`, as
    helm and the API server print values), JSON-escaped, base64 (standard and URL-safe, padded or
    not, also at any offset of a longer base64 text such as a Secret's data), with its whitespace
    collapsed (as `summarize` does), and, for a multi-line secret, each of its lines."""
    if len(secret) < MIN_SECRET_CHARS:
        return set()
    forms = {secret} | _escaped_forms(secret) | _base64_forms(secret.encode())
    lines = [line.strip() for line in _LINE_BREAK.split(secret)]
    if len(lines) > 1:
        for line in lines:
            if len(line) >= MIN_SECRET_LINE_CHARS and not _PEM_ARMOR.fullmatch(line):
                forms |= {line} | _escaped_forms(line)
    forms |= {_SPACE.sub(" ", form).strip() for form in forms}
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def go_quote(text: str, *, ascii_only: bool = False) -> str:
    """Go's `strconv.Quote(text)` (`QuoteToASCII` with `ascii_only`) without the outer quotes."""
    out: list[str] = []
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable() and (code < 0x80 or not ascii_only):
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code < 0xE000:  # a lone surrogate is no valid rune: Go writes U+FFFD
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def json_escape(text: str, *, ascii_only: bool = False, go: bool = False) -> str:
    """`text` as inside a JSON string: Python's encoder, or Go's (`go`: also `<`, `>`, `&`,
    U+2028 and U+2029 escaped)."""
    escaped = json.dumps(text, ensure_ascii=ascii_only)[1:-1]
    if go:
        escaped = "".join(_GO_JSON_EXTRA.get(char, char) for char in escaped)
    return escaped


def _escaped_forms(text: str) -> set[str]:
    def quote(value: str) -> set[str]:
        return {go_quote(value, ascii_only=ascii_only) for ascii_only in (False, True)}

    def escape(value: str) -> set[str]:
        return {
            json_escape(value, ascii_only=ascii_only, go=go)
            for ascii_only in (False, True)
            for go in (False, True)
        }

    quoted, escaped = quote(text), escape(text)
    # One level of nesting: a Go-quoted value inside a JSON message, and the reverse.
    nested = {f for q in quoted for f in escape(q)} | {f for e in escaped for f in quote(e)}
    return quoted | escaped | nested


def _base64_forms(data: bytes) -> set[str]:
    forms: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(data).decode()
        forms |= {whole, whole.rstrip("=")}
        # Inside a longer encoded text, the secret starts at a byte offset of 0, 1 or 2 modulo 3;
        # keep the characters that encode its bytes alone.
        for offset in (0, 1, 2):
            encoded = encode(bytes(offset) + data).decode()
            first = -(-8 * offset // 6)  # the first character without a filler bit
            end = 8 * (offset + len(data)) // 6  # past the last one without a trailing bit
            forms.add(encoded[first:end])
    return forms


# `helm test`: "pod NAME failed", "job NAME failed" (Helm 3 and 4).
_FAILED_TEST = re.compile(r"\b(pod|job)\s+\"?([a-z0-9][-a-z0-9.]*)\"?\s+failed", re.IGNORECASE)


def failed_test(error: HelmError) -> HelmError:
    """A failed `helm test` as TEST_FAILED naming the test that failed (a timeout stays a
    timeout, a refused connection a connection error)."""
    if error.kind in (HelmErrorKind.TIMEOUT, HelmErrorKind.CONNECTION, HelmErrorKind.FORBIDDEN):
        return error
    match = _FAILED_TEST.search(error.message)
    what = f"test {match.group(1).lower()} {match.group(2)} failed" if match else error.message
    return HelmError(
        HelmErrorKind.TEST_FAILED,
        error.command,
        f"{what} ({HINTS[HelmErrorKind.TEST_FAILED]})",
        returncode=error.returncode,
    )
