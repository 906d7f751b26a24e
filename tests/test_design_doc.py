"""docs/design.md keeps up with the protocol: every key and file name agent/protocol/keys.py declares
is in it, and the README's store table names only keys the design documents.

The constants are found by walking the module, so a key added to keys.py fails this test until
the doc names it.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.protocol import keys, records

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
README = ROOT / "README.md"
# Upper-case string constants of keys.py that are neither store keys nor file names.
NOT_NAMES: set[str] = set()


def declared_names() -> dict[str, str]:
    """{constant: value} for every module-level upper-case string constant of keys.py (store keys,
    workdir file names, tags), and `k=v` for each item of a dict-of-strings constant (object tags)."""
    out = {}
    for name, value in vars(keys).items():
        if not name.isupper() or name.startswith("_") or name in NOT_NAMES:
            continue
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, dict) and all(isinstance(x, str) for x in (*value, *value.values())):
            out.update({f"{name}[{k}]": f"{k}={v}" for k, v in value.items()})
    return out


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def mentioned(value: str, spans: list[str]) -> bool:
    """`value` is a code span of the doc, or a folder with one name below it (`logs/` in `logs/NNNNNNNN.log`),
    or the last part of a path (`trainer_state.pt` in `artifacts/checkpoint-<step>/trainer_state.pt`)."""
    bare = value.rstrip("/")
    for s in spans:
        if s == value or s.rstrip("/") == bare:
            return True
        if value.endswith("/") and s.startswith(value) and "/" not in s[len(value):]:
            return True  # one name below the prefix: `logs/` in `logs/NNNNNNNN.log`, not in `logs/a/b`
        if "/" not in value and s.endswith("/" + value):
            return True  # a file name at the end of a path
    return False


def section(text: str, title: str) -> str:
    """The body of the section headed `title`, subsections included."""
    head = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert head, f"no section {title!r}"
    level = len(head.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, head.end())  # the next heading as high
    return text[head.end():end.start() if end else len(text)]


def table_keys(text: str) -> list[str]:
    """The backticked first-column entries of every `| key | ...` or `| file | ...` table in `text`."""
    keys, in_table = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table = False
        elif cells[0] in ("key", "file"):
            in_table = True
        elif in_table and not set(cells[0]) <= {"-", " ", ":"}:
            keys += code_spans(cells[0])
    return keys


def test_records_reexports_every_name_keys_declares():
    # Callers write `p.HEARTBEAT` / `p.chunk_name(...)` with `records as p`: keys.py's names stay reachable there.
    public = {n for n in vars(keys) if not n.startswith("_") and n not in ("annotations", "re")}
    assert public and all(getattr(records, n, None) is getattr(keys, n) for n in public), \
        sorted(n for n in public if getattr(records, n, None) is not getattr(keys, n))


def test_records_declares_the_keys_this_test_knows_about():
    # Guards the walk itself: if these vanish, declared_names() is looking in the wrong place.
    names = set(declared_names().values())
    assert {"metadata.json", "_error", "_complete", "_alerts.json", "_index/done/", "_orphans/", "logs/"} <= names
    assert "trainctl-kind=log-chunk" in names


def test_every_key_and_file_name_of_the_protocol_is_in_the_design_doc():
    spans = code_spans(DESIGN.read_text())
    missing = {name: value for name, value in declared_names().items() if not mentioned(value, spans)}
    assert not missing, f"docs/design.md does not name {missing}: add them (store keys to its tables)"


def test_every_store_key_is_in_a_table_of_the_design_doc():
    """Store keys (not workdir names `WD_*`, not tags) are rows of the doc's store tables, so a reader
    finds each one with who writes it and what it holds."""
    text = DESIGN.read_text()
    rows = table_keys(section(text, "The run store (the protocol)"))
    workdir_rows = table_keys(section(text, "The workdir on the box"))
    for name, value in declared_names().items():
        if name.startswith("WD_"):
            assert mentioned(value, workdir_rows), f"{name} = {value!r} is not a row of the workdir table"
        elif "/" in value or value.startswith("_") or value.endswith(".json"):
            assert mentioned(value, rows), f"{name} = {value!r} is not a row of the store tables"


def test_readme_store_table_is_in_step_with_the_design_doc():
    """Every key of README.md's store table is one the design's store section documents (a row, or
    the longer form a row's text gives, like `_orphans/<region>/<instance-id>.json`)."""
    readme = table_keys(section(README.read_text(), "The run store"))
    assert len(readme) >= 10, f"README.md's store table was not found whole: {readme}"
    store = section(DESIGN.read_text(), "The run store (the protocol)")
    rows, spans = table_keys(store), code_spans(store)
    missing = [k for k in readme if not mentioned(k, spans) and not any(mentioned(r, [k]) for r in rows)]
    assert not missing, f"README.md's store table names keys docs/design.md does not document: {missing}"


def test_mentioned_is_strict_enough():
    spans = ["logs/NNNNNNNN.log", "artifacts/checkpoint-<step>/trainer_state.pt", "_index/done/"]
    assert mentioned("logs/", spans) and mentioned("trainer_state.pt", spans) and mentioned("_index/done/", spans)
    assert not mentioned("_index/", spans) and not mentioned("state.pt", spans) and not mentioned("done/", spans)
