"""`ctl train prepare`: sources -> validated, deduped, split, tokenized, packed Arrow datasets.

One streaming pass with bounded memory: records are read one at a time, tokenized a batch at a
time, packed into blocks and written to Arrow every `writer_batch_size` blocks. Nothing keeps a
list of the whole dataset. Output appears at `output_dir` only when complete (built in a sibling
`.partial` folder, then renamed), with report.json and rejects.jsonl beside train/ and val/.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from agent.protocol.errors import ConfigError, TrainctlError
from train.data.encode import encode_stream, prefetch
from train.data.pack import Packer, length_bucket
from train.data.records import Deduper, SourceStats, content_hash, is_val, record_text
from train.data.sources import list_files, read_items, selected
from train.schemas import DataConfig
from train.sft import progress
from train.sft.ticker import Ticker

FEATURES = {"input_ids": "int32", "seq_lengths": "int32"}


def load_tokenizer(path: str):
    """The base model's fast tokenizer, from a local folder only."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tokenizer.path: cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"tokenizer.path: {path} has no fast tokenizer (tokenizer.json); save one with the model")
    return tok


class _SplitWriter:
    """Packs one split's examples and streams the blocks into a `save_to_disk`-layout folder.

    The Arrow shard is written in place rather than through `Dataset.save_to_disk`, whose copy
    reads the whole memory-mapped file back and so grows RSS with the dataset's size."""

    SHARD = "data-00000-of-00001.arrow"

    def __init__(self, out_dir: Path, block_size: int, writer_batch_size: int):
        from datasets import Features, Sequence, Value
        from datasets.arrow_writer import ArrowWriter

        out_dir.mkdir(parents=True)
        self.dir = out_dir
        self.features = Features({k: Sequence(Value(t)) for k, t in FEATURES.items()})
        self.writer = ArrowWriter(features=self.features, path=str(out_dir / self.SHARD),
                                  writer_batch_size=writer_batch_size)
        self.packer = Packer(block_size)
        self.examples = 0

    def add(self, ids: list[int]) -> None:
        self.examples += 1
        for block in self.packer.add(ids):
            self.writer.write(block)

    def finish(self) -> dict:
        for block in self.packer.flush():
            self.writer.write(block)
        self.writer.finalize()
        p = self.packer
        if p.blocks:
            _write_dataset_metadata(self.dir, self.SHARD)
        else:  # an empty split gets no folder: datasets cannot reload a 0-row save
            shutil.rmtree(self.dir)
        eff = p.tokens / (p.blocks * p.block_size) if p.blocks else 1.0
        return {"examples": self.examples, "tokens": p.tokens, "blocks": p.blocks, "packing_efficiency": round(eff, 4)}


def _write_dataset_metadata(folder: Path, shard: str) -> None:
    """state.json + dataset_info.json exactly as `Dataset.save_to_disk` writes them for one shard,
    so `load_from_disk` memory-maps the shard where it lies."""
    from dataclasses import asdict

    from datasets import Dataset

    ds = Dataset.from_file(str(folder / shard))  # opens the stream's metadata; no rows are read
    state = {k: ds.__dict__[k] for k in ("_fingerprint", "_format_columns", "_format_kwargs", "_format_type",
                                         "_output_all_columns")}
    state["_split"] = None
    state["_data_files"] = [{"filename": shard}]
    info = asdict(ds._info)
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    (folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
    del ds


def _accepted_texts(cfg: DataConfig, tok, stats: dict[str, SourceStats], dedupe: Deduper, rejects, ticker):
    """Yield (is_val, text) for every usable, first-seen record, in source order."""
    v = cfg.validation
    render = (lambda msgs: tok.apply_chat_template(msgs, tokenize=False)) if v.format == "chat" else None
    for src in cfg.sources:
        st = stats[src.name] = SourceStats()
        field = src.text_field or v.text_field
        for rel, locator in list_files(src):
            st.files_listed += 1
            if not selected(rel, src.include, src.exclude):
                st.files_excluded += 1
                continue
            if src.max_files and st.files_read >= src.max_files:
                st.files_over_max += 1
                continue
            st.files_read += 1
            for item in read_items(rel, locator, cfg.prepare.pdf_max_pages):
                st.records += 1
                text, reason = (None, item.reason) if item.reason else record_text(
                    item.value, item.whole_text, v, field, render)
                if text is None:
                    st.rejected[reason] += 1
                    excerpt = item.excerpt or json.dumps(item.value, ensure_ascii=False)[:200]
                    if reason == "missing_field" and isinstance(item.value, dict):
                        excerpt = f"keys: {sorted(item.value)[:10]}"
                    rejects.write(json.dumps({"source": src.name, "file": rel, "line": item.line,
                                              "reason": reason, "excerpt": excerpt}, ensure_ascii=False) + "\n")
                    continue
                h = content_hash(text)
                if not dedupe.first_time(h):
                    st.duplicates += 1
                    continue
                st.accepted += 1
                val = is_val(h, cfg.split.seed, cfg.split.val_fraction)
                st.val += val
                st.train += not val
                ticker.tick(records=1)
                yield val, text


def _batched(pairs, size: int):
    batch: list = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare(cfg: DataConfig) -> dict:
    """Run the whole preparation; returns the report (also written to output_dir/report.json)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    progress.phase("preparing_data")
    tok = load_tokenizer(cfg.tokenizer.path)
    out = Path(cfg.output_dir)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    block = cfg.tokenizer.max_seq_length
    eos = tok.eos_token_id if cfg.tokenizer.add_eos else None
    writers = {False: _SplitWriter(tmp / "train", block, cfg.prepare.writer_batch_size),
               True: _SplitWriter(tmp / "val", block, cfg.prepare.writer_batch_size)}
    stats: dict[str, SourceStats] = {}
    lengths: Counter = Counter()
    dedupe = Deduper(tmp / "dedupe.sqlite")
    ticker = Ticker("preparing", enabled=cfg.prepare.progress)
    try:
        with open(tmp / "rejects.jsonl", "w", encoding="utf-8") as rejects, ticker:
            batches = prefetch(_batched(_accepted_texts(cfg, tok, stats, dedupe, rejects, ticker),
                                        cfg.prepare.batch_size))
            flags: list[list[bool]] = []

            def texts():  # the flags of each batch wait in a short queue until its ids come back
                for b in batches:
                    flags.append([f for f, _ in b])
                    yield [t for _, t in b]

            special = cfg.validation.format != "chat"  # the chat template already writes <s>
            for ids_batch in encode_stream(tok.backend_tokenizer, texts(), eos=eos, add_special_tokens=special,
                                           num_proc=cfg.prepare.num_proc):
                for f, ids in zip(flags.pop(0), ids_batch, strict=True):
                    lengths[len(ids)] += 1
                    writers[f].add(ids)
                ticker.tick(tokens=sum(len(i) for i in ids_batch))
        dedupe.close()
        (tmp / "dedupe.sqlite").unlink()
        report = _report(cfg, stats, lengths, {"train": writers[False].finish(),
                                                "val": writers[True].finish()}, out)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _check_rejects(cfg, report, tmp)
    old = out.parent / f".{out.name}.old"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return report


def _report(cfg: DataConfig, stats, lengths: Counter, splits: dict, out: Path) -> dict:
    hist: Counter = Counter()
    for n, c in lengths.items():
        hist[length_bucket(n)] += c
    order = sorted(hist, key=lambda b: int(b.split("-")[0]))
    rejects = Counter()
    for st in stats.values():
        rejects.update(st.rejected)
    records = sum(st.records for st in stats.values())
    return {
        "output_dir": str(out), "max_seq_length": cfg.tokenizer.max_seq_length,
        "sources": {name: st.as_dict() for name, st in stats.items()},
        "records": records, "accepted": sum(st.accepted for st in stats.values()),
        "duplicates": sum(st.duplicates for st in stats.values()),
        "rejected": sum(rejects.values()), "rejects_by_reason": dict(sorted(rejects.items())),
        "token_length_histogram": {b: hist[b] for b in order},
        **splits, "rejects_file": str(out / "rejects.jsonl"),
    }


def _check_rejects(cfg: DataConfig, report: dict, tmp: Path) -> None:
    records, rejected = report["records"], report["rejected"]
    if records and rejected / records > cfg.validation.max_reject_fraction:
        keep = Path(cfg.output_dir).parent / f"{Path(cfg.output_dir).name}.rejects.jsonl"
        shutil.move(str(tmp / "rejects.jsonl"), keep)
        shutil.rmtree(tmp, ignore_errors=True)
        why = ", ".join(f"{k}: {v}" for k, v in report["rejects_by_reason"].items())
        hint = ""
        if report["rejects_by_reason"].get("missing_field"):
            hint = f"; is validation.text_field={cfg.validation.text_field!r} the right field? (see the excerpts)"
        err = ConfigError if hint else TrainctlError  # a wrong field name is a config mistake
        raise err(f"{rejected} of {records} records rejected ({why}), above "
                            f"validation.max_reject_fraction={cfg.validation.max_reject_fraction}{hint}; "
                            f"rejects are in {keep}")
    if records == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError("the sources hold no records: check their paths and include/exclude globs")
