"""Secret redaction for every line that leaves the box (log chunks, latest log, `_error`, Slack).

Patterns are anchored on shapes that real credentials have (AWS key ids, STS session tokens,
Slack webhook paths, Hugging Face tokens, bearer headers) plus `name=value` pairs whose name
says "secret". Non-secrets that merely look long (hex digests, file paths) are left alone so
the log stays useful. Cheap substring pre-checks skip the regexes where no secret can be.
"""

from __future__ import annotations

import re

MASK = "[REDACTED]"

# (literal hints, pattern, replacement). A rule runs only when one of its hints occurs in the
# lowercased text (a fast substring scan), so a chatty log pays for the regexes only where a
# secret could be. Order matters: specific shapes first, generic name=value last.
_AWS_ID_PREFIXES = ("akia", "asia", "abia", "acca", "agpa", "aida", "aipa", "anpa", "anva", "aroa", "apka", "asca")
_RULES: list[tuple[tuple[str, ...] | None, re.Pattern[str], str]] = [
    # PEM private keys (single line as logged; the body lines are caught by the base64 rule).
    (("-----begin",), re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"), MASK),
    # Slack incoming webhooks / workflow triggers: the path is the secret.
    (("hooks.slack",), re.compile(r"https://hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]+"),
     "https://hooks.slack.com/" + MASK),
    # Slack bot/user/app tokens.
    (("xox", "xapp-"), re.compile(r"\bx(?:ox[abposr]|app)-[A-Za-z0-9\-]{10,}"), MASK),
    # Hugging Face user/org tokens.
    (("hf_", "api_org_"), re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{30,}\b"), MASK),
    # Authorization headers and bare "Bearer <token>".
    (("authorization",), re.compile(r"(?i)\b(authorization\s*[:=]\s*[\"']?(?:bearer|token|basic)?\s*)"
                                    r"[A-Za-z0-9._~+/\-]{8,}=*"), r"\1" + MASK),
    (("bearer",), re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/\-]{12,}=*"), r"\1" + MASK),
    # AWS access key ids (long-term AKIA, temporary ASIA, and the other documented prefixes).
    (_AWS_ID_PREFIXES, re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b"),
     MASK),
    # STS session tokens: long base64 blobs with the well-known prefixes.
    (("iqojb3jpz2lu", "fwoggxivyxdz", "fqoggxivyxdz"),
     re.compile(r"\b(?:IQoJb3JpZ2lu|FwoGZXIvYXdz|FQoGZXIvYXdz)[A-Za-z0-9/+=]{20,}"), MASK),
]
# name=value / "name": "value" where the name says it is a secret. Only the value is replaced, so
# `token` also covers session_token, access_token, auth_token; one rule per name keeps each regex
# anchored on a literal, which is what makes it cheap.
for _kw in ("secret", "token", "password", "passwd", "access_key", "accesskey", "access-key", "api_key", "api-key",
            "apikey", "webhook_url", "webhook-url", "private_key", "private-key"):
    _RULES.append(((_kw,), re.compile(rf"(?i)({re.escape(_kw)}[\"']?\s*[:=]\s*[\"']?)([^\s\"',;}}]{{6,}})"),
                   r"\1" + MASK))
# A bare 40-char AWS secret access key: base64 alphabet, mixed case, not a hex digest.
_B40 = re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[0-9/+])"
                  r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_RULES.append((None, _B40, MASK))
_RULES_B = [(tuple(h.encode() for h in hints) if hints else None, pat, repl) for hints, pat, repl in _RULES]

# Bytes of the base64 alphabet become "a", everything else " ": a 40-char run is then a plain
# substring search, far cheaper than running the regex over a chunk that has none.
_B64_MAP = bytes(ord("a") if chr(c).isascii() and (chr(c).isalnum() or chr(c) in "/+") else ord(" ")
                 for c in range(256))
_B64_RUN = b"a" * 40


def _apply(text: str, raw: bytes) -> str:
    low = raw.lower()  # ASCII lowering of bytes: the hint scans stay at C speed
    for hints, pattern, repl in _RULES_B:
        if hints is None:
            if _B64_RUN not in raw.translate(_B64_MAP):
                continue
        elif not any(h in low for h in hints):
            continue
        text = pattern.sub(repl, text)
    return text


def redact(text: str) -> str:
    """`text` with every credential-shaped substring replaced by `[REDACTED]`."""
    if not text:
        return text
    out = _apply(text, text.encode("utf-8", "surrogateescape"))
    return text if out == text else out


def redact_bytes(data: bytes) -> bytes:
    """Redact raw log bytes; bytes that are not UTF-8 pass through unchanged."""
    if not data:
        return data
    text = data.decode("utf-8", "surrogateescape")
    out = _apply(text, data)
    return data if out == text else out.encode("utf-8", "surrogateescape")


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
