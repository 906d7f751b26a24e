"""`ctl train prepare` on local and S3 (moto) sources: exact counts, rejects, dedupe, split, workers."""

from __future__ import annotations

import json
import os

import pytest

from agent.protocol.errors import TrainctlError
from tests.fixtures.tiny_model import write_jsonl
from train.config import load_config
from train.data.prepare import prepare
from train.schemas import DataConfig


def T(word: str) -> str:
    return f"the {word} note explains the budget line for water grids and solar tariffs"


@pytest.fixture
def sources(tmp_path, moto_server, monkeypatch):
    """A local folder and an S3 prefix with every kind of bad record the seeds met."""
    monkeypatch.setenv("TRAINCTL_S3_ENDPOINT", moto_server.endpoint)
    pol = tmp_path / "policy"
    write_jsonl(pol / "a.jsonl", [{"text": T("p1")}, {"text": T("p2")}, "{not json", {"text": ""}, {"text": T("p3")}])
    write_jsonl(pol / "processed" / "skip.jsonl", [{"text": T("processed")}])
    write_jsonl(pol / "failed" / "skip.jsonl", [{"text": T("failed")}])
    (pol / "b.json").write_text(json.dumps([{"text": T("p4")}, {"text": T("p1")}, {"title": "no text"}]))
    (pol / "c.txt").write_text(T("txt-file"))
    (pol / "notes.md").write_text("not a data file")
    bucket = moto_server.new_bucket()
    s3 = moto_server.client("s3")

    def put(key, rows):
        body = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode())

    put("ops/x.jsonl", [{"text": T("o1")}, {"text": "  " + T("p2") + " "}, {"text": "   "}, "42"])
    put("ops/news/n.jsonl", [{"text": T("news")}])
    put("ops/y.jsonl", [{"text": T("o2")}, {"text": 7}])
    put("ops/z.jsonl", [{"text": T("o3")}])
    return pol, f"s3://{bucket}/ops/"


def _config(tmp_path, tiny_model, pol, s3_url, *extra) -> DataConfig:
    toml = tmp_path / "data.toml"
    toml.write_text(f"""
output_dir = "{tmp_path / 'prepared'}"
[tokenizer]
path = "{tiny_model}"
max_seq_length = 32
[split]
val_fraction = 0.3
[prepare]
progress = false
[[sources]]
name = "policy"
path = "{pol}"
exclude = ["processed/**", "failed/**"]
[[sources]]
name = "operatives"
path = "{s3_url}"
exclude = ["news/**"]
max_files = 2
""")
    return load_config(DataConfig, toml, list(extra))


def test_exact_counts_rejects_and_dedupe_across_local_and_s3(tmp_path, tiny_model, sources):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    cfg = _config(tmp_path, tiny_model, *sources)
    report = prepare(cfg)
    pol, ops = report["sources"]["policy"], report["sources"]["operatives"]
    assert (pol["files_listed"], pol["files_excluded"], pol["files_read"]) == (6, 3, 3)  # notes.md fails the include
    assert (pol["records"], pol["accepted"], pol["duplicates"]) == (9, 5, 1)
    assert pol["rejected"] == {"empty_text": 1, "malformed_json": 1, "missing_field": 1}
    assert (ops["files_listed"], ops["files_excluded"], ops["files_over_max"], ops["files_read"]) == (4, 1, 1, 2)
    assert (ops["records"], ops["accepted"], ops["duplicates"]) == (6, 2, 1)  # " p2 " repeats policy's p2
    assert ops["rejected"] == {"empty_text": 1, "not_a_string": 1, "not_an_object": 1}
    assert report["rejects_by_reason"] == {"empty_text": 2, "malformed_json": 1, "missing_field": 1,
                                           "not_a_string": 1, "not_an_object": 1}
    assert (report["records"], report["accepted"], report["duplicates"], report["rejected"]) == (15, 7, 2, 6)

    out = tmp_path / "prepared"
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted((r["source"], r["file"], r["line"], r["reason"]) for r in rejects) == sorted([
        ("policy", "a.jsonl", 3, "malformed_json"), ("policy", "a.jsonl", 4, "empty_text"),
        ("policy", "b.json", 3, "missing_field"), ("operatives", "x.jsonl", 3, "empty_text"),
        ("operatives", "x.jsonl", 4, "not_an_object"), ("operatives", "y.jsonl", 2, "not_a_string")])

    # Every accepted text's tokens (+ EOS) are in exactly one split, nothing more.
    tok = AutoTokenizer.from_pretrained(tiny_model)
    accepted = [T(w) for w in ("p1", "p2", "p3", "p4", "txt-file", "o1", "o2")]
    expected = sum(len(tok(t).input_ids) + 1 for t in accepted)
    splits = {s: load_from_disk(str(out / s)) for s in ("train", "val") if (out / s).exists()}
    got = sum(len(row["input_ids"]) for ds in splits.values() for row in ds)
    assert got == expected == report["train"]["tokens"] + report["val"]["tokens"]
    assert report["train"]["examples"] + report["val"]["examples"] == 7
    assert sum(report["token_length_histogram"].values()) == 7
    assert not list(tmp_path.glob(".prepared.*"))  # no partial output left behind


def test_split_is_stable_when_sources_are_reread_in_another_order(tmp_path, tiny_model, sources):
    cfg = _config(tmp_path, tiny_model, *sources)
    first = prepare(cfg)
    cfg.sources.reverse()
    second = prepare(cfg)
    for split in ("train", "val"):
        assert first[split]["examples"] == second[split]["examples"]
        assert first[split]["tokens"] == second[split]["tokens"]


def test_worker_pool_gives_the_same_blocks_as_one_process(tmp_path, tiny_model, sources):
    from datasets import load_from_disk

    one = prepare(_config(tmp_path, tiny_model, *sources))
    rows1 = load_from_disk(one["output_dir"] + "/train")[:]
    two = prepare(_config(tmp_path, tiny_model, *sources, "prepare.num_proc=2", "prepare.batch_size=2"))
    rows2 = load_from_disk(two["output_dir"] + "/train")[:]
    assert rows1 == rows2


class CrashingTokenizer:
    """Stands in for a tokenizer whose worker process dies (as under the OOM killer)."""

    def encode_batch(self, texts, add_special_tokens=True):
        os._exit(137)


def test_a_dead_worker_is_a_clear_error_not_a_hang():
    from train.data.encode import encode_stream

    with pytest.raises(TrainctlError, match="worker process died.*lower prepare.num_proc"):
        list(encode_stream(CrashingTokenizer(), [["a"], ["b"], ["c"]], eos=None, num_proc=2))


def test_rejects_over_the_threshold_fail_with_the_reason_and_keep_the_rejects(tmp_path, tiny_model, sources):
    cfg = _config(tmp_path, tiny_model, *sources, "validation.max_reject_fraction=0.2")
    with pytest.raises(TrainctlError, match=r"6 of 15 records rejected .*max_reject_fraction=0.2"):
        prepare(cfg)
    assert not (tmp_path / "prepared").exists()
    assert len((tmp_path / "prepared.rejects.jsonl").read_text().splitlines()) == 6


def test_chat_records_are_rendered_by_the_template_and_bad_ones_rejected(tmp_path, tiny_model):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    good = [{"messages": [{"role": "user", "content": f"status of line {i}?"},
                          {"role": "assistant", "content": "stable since the fix"}]} for i in range(4)]
    write_jsonl(tmp_path / "chat" / "c.jsonl", good + [{"messages": "not a list"}, {"messages": [{"role": "user"}]},
                                                       {"text": "no messages"}])
    cfg = load_config(DataConfig, None, [f"output_dir={tmp_path / 'out'!s}", f"tokenizer.path={tiny_model!s}",
                                         "validation.format=chat", "validation.max_reject_fraction=0.5",
                                         "split.val_fraction=0.0", "prepare.progress=false",
                                         f"sources=[{{path='{tmp_path / 'chat'}'}}]"])
    report = prepare(cfg)
    assert report["accepted"] == 4
    assert report["rejects_by_reason"] == {"bad_messages": 2, "missing_field": 1}
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rendered = tok.apply_chat_template(good[0]["messages"], tokenize=False).strip()
    ids = tok(rendered, add_special_tokens=False).input_ids + [tok.eos_token_id]
    first = load_from_disk(str(tmp_path / "out" / "train"))[0]["input_ids"]
    assert first[: len(ids)] == ids and ids[0] == tok.bos_token_id  # the template's <s>, not a second one


def test_pdf_without_pypdf_is_a_reject_that_says_what_to_install(tmp_path):
    from train.data.sources import read_items

    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")
    (item,) = read_items("doc.pdf", str(pdf), 5)
    try:
        import pypdf  # noqa: F401
    except ImportError:
        assert (item.reason, item.excerpt) == ("pdf_needs_pypdf", "pip install pypdf to read PDF sources")
    else:
        assert item.reason == "pdf_unreadable"  # a truncated PDF is rejected, not fatal


def test_an_unreadable_s3_source_is_one_clear_error(tmp_path, tiny_model, moto_server, monkeypatch):
    monkeypatch.setenv("TRAINCTL_S3_ENDPOINT", moto_server.endpoint)
    cfg = load_config(DataConfig, None, [f"output_dir={tmp_path / 'out'!s}", f"tokenizer.path={tiny_model!s}",
                                         "sources=[{name='gone', path='s3://no-such-bucket-here/data/'}]"])
    with pytest.raises(TrainctlError, match=r"source 'gone': cannot list s3://no-such-bucket-here/data/: .*NoSuchBucket"):
        prepare(cfg)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
