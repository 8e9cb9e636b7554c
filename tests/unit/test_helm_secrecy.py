"""Secrets are redacted from helm's messages in every encoding a message may quote them in.

The expected Go forms below were printed by Go itself (`strconv.Quote`, `%+q`, `json.Marshal`),
so that the redaction is checked against the real encoders, not against its own idea of them.
"""

from __future__ import annotations

import base64
import json

import pytest

from helmfile_operator.helm.errors import (
    REDACTED,
    classify,
    go_quote,
    json_escape,
    redact_text,
    secret_forms,
    summarize,
)

# Quotes, a backslash, a newline, a tab, HTML characters, non-ASCII and a control character.
SECRET = 'p"w\\d\n\tx<&>é\x01end'
GO_QUOTED = r"p\"w\\d\n\tx<&>é\x01end"  # strconv.Quote, %q
GO_QUOTED_ASCII = r"p\"w\\d\n\tx<&>\u00e9\x01end"  # strconv.QuoteToASCII, %+q
GO_JSON = r"p\"w\\d\n\tx\u003c\u0026\u003eé\u0001end"  # encoding/json

PEM_BODY = [
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
    "VJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu",
]
PEM = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END PRIVATE KEY-----\n"
PEM_GO_QUOTED = (
    r"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
    r"VJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    r"-----END PRIVATE KEY-----\n"
)


def leaks(text: str, secret: str) -> bool:
    """Whether any recognisable piece of `secret` survives in `text`."""
    pieces = [secret, *[line for line in secret.splitlines() if len(line) >= 8]]
    return any(piece in text for piece in pieces)


# --- the encoders agree with Go's -----------------------------------------------------------------


def test_go_quote_matches_strconv() -> None:
    assert go_quote(SECRET) == GO_QUOTED
    assert go_quote(SECRET, ascii_only=True) == GO_QUOTED_ASCII
    assert go_quote(PEM) == PEM_GO_QUOTED
    assert go_quote("\x7f\u00a0\U0001f600") == r"\x7f\u00a0😀"
    assert go_quote("\U0001f600", ascii_only=True) == r"\U0001f600"


def test_json_escape_matches_encoding_json() -> None:
    assert json_escape(SECRET, go=True) == GO_JSON
    assert json_escape(SECRET) == json.dumps(SECRET, ensure_ascii=False)[1:-1]
    assert json_escape("\u2028", go=True) == r"\u2028"


# --- every encoding is redacted -------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(SECRET, id="raw"),
        pytest.param(GO_QUOTED, id="go-quoted"),
        pytest.param(GO_QUOTED_ASCII, id="go-quoted-ascii"),
        pytest.param(GO_JSON, id="go-json"),
        pytest.param(json.dumps(SECRET)[1:-1], id="json-ascii"),
        pytest.param(json.dumps(SECRET, ensure_ascii=False)[1:-1], id="json"),
        pytest.param(json.dumps(GO_QUOTED)[1:-1], id="go-quoted-inside-json"),
        pytest.param(base64.b64encode(SECRET.encode()).decode(), id="base64"),
        pytest.param(base64.b64encode(SECRET.encode()).decode().rstrip("="), id="base64-unpadded"),
        pytest.param(base64.urlsafe_b64encode(SECRET.encode()).decode(), id="base64-url"),
        pytest.param(
            base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="), id="base64-url-unpadded"
        ),
    ],
)
def test_each_encoding_is_redacted(form: str) -> None:
    message = f'Secret "db" is invalid: data.db-key: Invalid value: "{form}": bad'
    redacted = redact_text(message, [SECRET])
    assert form not in redacted
    assert redacted == f'Secret "db" is invalid: data.db-key: Invalid value: "{REDACTED}": bad'


def test_helm4_schema_error_quoting_the_value() -> None:
    stderr = (
        "Error: values don't meet the specifications of the schema(s) in the following chart(s):\n"
        f"demo:\n- at '/password': got \"{GO_QUOTED}\", want integer\n"
    )
    error = classify("upgrade", stderr, 1, False, redact=[SECRET])
    assert error.kind == "InvalidValues"
    assert GO_QUOTED not in error.message
    assert REDACTED in error.message
    assert "/password" in error.message  # the rest of the message stays useful


@pytest.mark.parametrize("prefix", ["", "k", "ke", "key: ", "a longer prefix of text: "])
def test_base64_inside_a_longer_encoded_text(prefix: str) -> None:
    # A Secret's data: base64 of a whole file or of `user:password` (a registry's `auth`), with
    # the secret at any byte offset.
    encoded = base64.b64encode(f"{prefix}{SECRET} and more".encode()).decode()
    redacted = redact_text(f"data: {encoded}", [SECRET])
    # What remains decodes to neither the secret nor most of it.
    assert encoded not in redacted
    core = base64.b64encode(SECRET.encode()).decode()[2:-4]
    assert core not in redacted
    assert REDACTED in redacted


def test_a_registry_auth_is_redacted() -> None:
    auth = base64.b64encode(f"robot:{SECRET}".encode()).decode()
    assert REDACTED in redact_text(f'{{"auths":{{"r.io":{{"auth":"{auth}"}}}}}}', [SECRET])
    assert auth not in redact_text(auth, [SECRET])


# --- multi-line secrets ---------------------------------------------------------------------------


def test_pem_whole_and_go_quoted() -> None:
    for text in (f"bad key {PEM} here", f'bad key "{PEM_GO_QUOTED}" here'):
        redacted = redact_text(text, [PEM])
        assert not leaks(redacted, PEM)
        assert "bad key" in redacted and "here" in redacted


def test_each_line_of_a_pem_is_redacted_on_its_own() -> None:
    for line in PEM_BODY:
        redacted = redact_text(f'error converting YAML: line 3: "{line}" is not valid', [PEM])
        assert line not in redacted
        assert REDACTED in redacted


def test_a_pem_reflowed_by_summarize() -> None:
    # summarize() joins helm's lines and collapses whitespace before redacting.
    stderr = "Error: INSTALLATION FAILED: bad certificate:\n" + PEM.replace("\n", "\n  ")
    summary = summarize(stderr, redact=[PEM])
    assert not leaks(summary, PEM)
    assert " ".join(PEM_BODY) not in summary


def test_pem_armor_lines_are_not_secrets() -> None:
    forms = secret_forms(PEM)
    assert "-----BEGIN PRIVATE KEY-----" not in forms
    assert redact_text("expected -----BEGIN CERTIFICATE-----", [PEM]).endswith("CERTIFICATE-----")


def test_short_lines_of_a_multi_line_secret_stay() -> None:
    secret = "a-long-first-line\nxyz1\n"
    assert redact_text("xyz1 is fine", [secret]) == "xyz1 is fine"
    assert redact_text("a-long-first-line", [secret]) == REDACTED


# --- what is not a secret -------------------------------------------------------------------------


def test_short_secrets_are_ignored() -> None:
    # Values such as "yes", "on", "1" would scrub ordinary words.
    assert secret_forms("yes") == set()
    assert redact_text("yes, the key is on", ["yes", "on", "1"]) == "yes, the key is on"


def test_forms_are_never_shorter_than_the_minimum() -> None:
    assert all(len(form) >= 4 for form in secret_forms("abcd"))
    assert all(len(form) >= 4 for form in secret_forms(PEM))
    assert "abcd" in secret_forms("abcd")


def test_a_secret_inside_a_word_is_still_redacted_whole() -> None:
    assert redact_text(f"x{SECRET}y", [SECRET]) == f"x{REDACTED}y"
