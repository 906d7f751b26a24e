"""Secret redaction for every line that leaves the box (log chunks, latest log, `_error`, Slack).

Patterns are anchored on shapes that real credentials have (AWS key ids, STS session tokens,
Slack webhook paths, Hugging Face tokens, bearer headers) plus `name=value` pairs whose name
says "secret". Non-secrets that merely look long (hex digests, file paths) are left alone so
the log stays useful.

On top of the shapes, the agent remembers the exact values of its own secret environment variables
(`remember_env`: HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, ...), so a trainer that prints
one bare (a W&B key is 40 hex digits, a shape no rule may mask) still ships `[REDACTED]`.

Speed matters because a chatty trainer writes megabytes a minute: every shape rule starts with a
literal (which lets the regex engine skip ahead at C speed), and the case-insensitive
`name=value` rules run only where a fast literal gate found the name followed by `=` or `:`.
"""

from __future__ import annotations

import re

MASK = "[REDACTED]"

_AWS_ID_PREFIXES = {"AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "AROA", "APKA", "ASCA"}


def _aws_id(m: re.Match) -> str:
    return MASK if m.group(0)[:4] in _AWS_ID_PREFIXES else m.group(0)


# Shape rules: (pattern, replacement). Case-sensitive, literal first, always run.
_SHAPES: list[tuple[re.Pattern[str], object]] = [
    # PEM private keys (single line as logged; body lines are caught by the base64 rule).
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"), MASK),
    # Slack incoming webhooks / workflow triggers: the path is the secret.
    (re.compile(r"https://hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]+"),
     "https://hooks.slack.com/" + MASK),
    # Slack bot/user/app tokens.
    (re.compile(r"xox[abposr]-[A-Za-z0-9\-]{10,}"), MASK),
    (re.compile(r"xapp-[A-Za-z0-9\-]{10,}"), MASK),
    # Hugging Face user/org tokens.
    (re.compile(r"hf_[A-Za-z0-9]{30,}"), MASK),
    (re.compile(r"api_org_[A-Za-z0-9]{30,}"), MASK),
    # AWS access key ids (AKIA long-term, ASIA temporary, ...); the prefix is checked in _aws_id.
    (re.compile(r"A[A-Z]{3}[A-Z0-9]{16}(?![A-Z0-9])"), _aws_id),
    # STS session tokens: long base64 blobs with the well-known prefixes.
    (re.compile(r"IQoJb3JpZ2lu[A-Za-z0-9/+=]{20,}"), MASK),
    (re.compile(r"FwoGZXIvYXdz[A-Za-z0-9/+=]{20,}"), MASK),
    (re.compile(r"FQoGZXIvYXdz[A-Za-z0-9/+=]{20,}"), MASK),
]

# Names whose value is a secret. Only the value is replaced, so `token` also covers
# session_token, access_token and auth_token.
_NAMES = ("secret", "token", "password", "passwd", "access_key", "accesskey", "access-key", "api_key", "api-key",
          "apikey", "webhook_url", "webhook-url", "private_key", "private-key")
# Per-name gates over the lowercased bytes: a literal first, so each is a fast skip-ahead search.
_GATES = {"authorization": re.compile(rb"authorization\s*[:=]"), "bearer": re.compile(rb"bearer\s")}
_GATES.update({n: re.compile(re.escape(n.encode()) + rb"[\"']?\s*[:=]") for n in _NAMES})
_HEADER_RULES = {
    "authorization": (re.compile(r"(?i)(authorization\s*[:=]\s*[\"']?(?:bearer|token|basic)?\s*)"
                                 r"[A-Za-z0-9._~+/\-]{8,}=*"), r"\1" + MASK),
    "bearer": (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/\-]{12,}=*"), r"\1" + MASK),
}
_NAME_RULES = {n: (re.compile(rf"(?i)({re.escape(n)}[\"']?\s*[:=]\s*[\"']?)([^\s\"',;}}]{{6,}})"), r"\1" + MASK)
               for n in _NAMES}

# A bare 40-char AWS secret access key: base64 alphabet, mixed case, not a hex digest. Bytes of
# the alphabet map to "a", others to " ", so "is there a 40-run at all" is one substring search.
_B40 = re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[0-9/+])"
                  r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_B64_MAP = bytes(ord("a") if chr(c).isascii() and (chr(c).isalnum() or chr(c) in "/+") else ord(" ")
                 for c in range(256))
_B64_RUN = b"a" * 40


# Exact secret values this process knows (remember_env), longest first so a value that contains
# another is masked whole; matched by plain substring search, which runs at C speed.
_KNOWN: list[str] = []
_SECRET_WORDS = {"SECRET", "TOKEN", "PASSWORD", "PASSWD", "APIKEY", "CREDENTIALS", "PAT"}
_SECRET_PAIRS = {("API", "KEY"), ("ACCESS", "KEY"), ("PRIVATE", "KEY"), ("WEBHOOK", "URL"), ("SIGNING", "SECRET")}
_MIN_KNOWN = 8  # shorter values ("true", "1") would mask ordinary output


def secret_name(name: str) -> bool:
    """Whether an environment variable's name says its value is a secret, word by word
    (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY; not TOKENIZERS_PARALLELISM)."""
    words = re.split(r"[_\-]+", name.upper())
    return bool(_SECRET_WORDS & set(words)) or any(pair in _SECRET_PAIRS for pair in zip(words, words[1:], strict=False))


def remember_env(env) -> int:
    """Mask from now on, wherever they appear, the values of `env`'s secret-named variables
    (secret_name, at least 8 characters); returns how many values are remembered."""
    found = {v.strip() for k, v in env.items() if secret_name(k) and len(v.strip()) >= _MIN_KNOWN}
    _KNOWN[:] = sorted(set(_KNOWN) | found, key=len, reverse=True)
    return len(_KNOWN)


def _apply(text: str, raw: bytes) -> str:
    for value in _KNOWN:
        if value in text:
            text = text.replace(value, MASK)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    low = raw.lower()  # ASCII lowering of bytes: the gates stay at C speed
    for name, gate in _GATES.items():
        if gate.search(low):
            pattern, repl = _HEADER_RULES.get(name) or _NAME_RULES[name]
            text = pattern.sub(repl, text)
    if _B64_RUN in raw.translate(_B64_MAP):
        text = _B40.sub(MASK, text)
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
