"""Secret redaction for every line that leaves the box (log chunks, latest log, `_error`, Slack).

Patterns are anchored on shapes that real credentials have (AWS key ids, STS session tokens,
Slack webhook paths, Hugging Face tokens, bearer headers) plus `name=value` pairs whose name
says "secret". Non-secrets that merely look long (hex digests, file paths) are left alone so
the log stays useful. A cheap substring pre-check skips the regexes for most lines.
"""

from __future__ import annotations

import re

MASK = "[REDACTED]"

# (pattern, replacement). Order matters: specific shapes first, generic name=value last.
_RULES: list[tuple[re.Pattern[str], str]] = [
    # PEM private keys (single line as logged; the body lines are caught by the base64 rule).
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"), MASK),
    # Slack incoming webhooks / workflow triggers: the path is the secret.
    (re.compile(r"https://hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]+"),
     "https://hooks.slack.com/" + MASK),
    # Slack bot/user/app tokens.
    (re.compile(r"\bx(?:ox[abposr]|app)-[A-Za-z0-9\-]{10,}"), MASK),
    # Hugging Face user/org tokens.
    (re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{30,}\b"), MASK),
    # Authorization headers and bare "Bearer <token>".
    (re.compile(r"(?i)\b(authorization\s*[:=]\s*[\"']?(?:bearer|token|basic)?\s*)[A-Za-z0-9._~+/\-]{8,}=*"),
     r"\1" + MASK),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/\-]{12,}=*"), r"\1" + MASK),
    # AWS access key ids (long-term AKIA, temporary ASIA, and the other documented prefixes).
    (re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b"), MASK),
    # STS session tokens: long base64 blobs with the well-known prefixes.
    (re.compile(r"\b(?:IQoJb3JpZ2lu|FwoGZXIvYXdz|FQoGZXIvYXdz)[A-Za-z0-9/+=]{20,}"), MASK),
    # name=value / "name": "value" where the name says it is a secret.
    (re.compile(r"(?i)((?:aws_)?(?:secret_access_key|session_token|security_token|secret|password|passwd|"
                r"api[_-]?key|access[_-]?token|auth[_-]?token|token|webhook[_-]?url|private[_-]?key)"
                r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;}]{6,})"), r"\1" + MASK),
    # A bare 40-char AWS secret access key: base64 alphabet, mixed case, not a hex digest.
    (re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[0-9/+])"
                r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"), MASK),
]

# Lowercased substrings of which at least one must occur before any rule can match.
_HINTS = ("-----begin", "hooks.slack", "xox", "xapp-", "hf_", "api_org_", "bearer", "token", "authorization",
          "akia", "asia", "abia", "acca", "agpa", "aida", "aipa", "anpa", "anva", "aroa", "apka", "asca",
          "iqojb3jpz2lu", "fwoggxivyxdz", "fqoggxivyxdz", "secret", "passw", "api", "key", "webhook")
_B40 = re.compile(r"[A-Za-z0-9/+]{40}")


def _maybe_secret(text: str) -> bool:
    low = text.lower()
    return any(h in low for h in _HINTS) or _B40.search(text) is not None


def redact(text: str) -> str:
    """`text` with every credential-shaped substring replaced by `[REDACTED]`."""
    if not text or not _maybe_secret(text):
        return text
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """Redact raw log bytes; bytes that are not UTF-8 pass through unchanged."""
    text = data.decode("utf-8", "surrogateescape")
    out = redact(text)
    return data if out is text else out.encode("utf-8", "surrogateescape")


def redact_argv(argv: list[str]) -> list[str]:
    """A command line safe to store in metadata (`--hf-token xyz` and `KEY=...` hidden)."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if re.fullmatch(r"--?[\w-]*(?:token|secret|password|key|webhook)[\w-]*", arg, re.I):
            hide_next = True
            out.append(arg)
            continue
        out.append(redact(arg))
    return out
