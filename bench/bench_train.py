"""train/ benchmarks: prep memory vs input size, prep throughput vs the raw tokenizer, packing.

Synthetic records with a realistic length mix (log-normal, median ~600 characters, a long tail to
30k) are written as JSONL; `prepare` runs in a fresh subprocess per size so each peak RSS is its
own. Baselines come from the same run: the smaller size for the RSS ratio, the raw batched fast
tokenizer on the same records for throughput, padded batches of the same examples for packing.
Quick mode: 20k and 100k records; `--full`: 100k and 1M.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK, BATCH = 512, 4

PREP_CHILD = r'''
import json, resource, sys, time
import datasets, datasets.arrow_writer, transformers  # one-time imports, outside the timed region as for the baseline
from transformers import AutoTokenizer
from train.config import load_config
from train.data.prepare import prepare
from train.schemas import DataConfig
cfg = load_config(DataConfig, sys.argv[1])
t0 = time.perf_counter()
report = prepare(cfg)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "records": report["accepted"], "tokens": report["train"]["tokens"] + report["val"]["tokens"]}))
'''

TOKENIZER_CHILD = r'''
import json, sys, time
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
texts = [json.loads(l)["text"] for f in sys.argv[3:] for l in open(f)]
t0 = time.perf_counter()
lengths = []
for i in range(0, len(texts), 1000):
    lengths += [len(x) + 1 for x in tok(texts[i:i + 1000]).input_ids]
wall = time.perf_counter() - t0
json.dump(lengths, open(sys.argv[2], "w"))
print(json.dumps({"wall": wall, "records": len(texts), "tokens": sum(lengths)}))
'''


def _words(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    return ["".join(rng.choice(letters[: rng.randint(6, 26)]) for _ in range(rng.randint(2, 10))) for _ in range(3000)]


def write_records(folder: Path, n: int, seed: int = 0, per_file: int = 50_000) -> list[Path]:
    """n unique records of log-normal length, in JSONL files of `per_file` records."""
    rng = random.Random(seed)
    words = _words(rng)
    pool = " ".join(rng.choice(words) for _ in range(400_000))  # ~2.5M chars to slice from
    files = []
    for start in range(0, n, per_file):
        path = folder / f"part-{start // per_file:04d}.jsonl"
        with open(path, "w") as fh:
            for i in range(start, min(n, start + per_file)):
                length = min(30_000, int(rng.lognormvariate(6.4, 1.0)) + 20)
                at = rng.randrange(0, len(pool) - length)
                fh.write(json.dumps({"text": f"record {i}: " + pool[at:at + length]}) + "\n")
        files.append(path)
    return files


def _child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "child failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _prep(root: Path, model: Path, src: Path, name: str) -> dict:
    toml = root / f"{name}.toml"
    toml.write_text(f'output_dir = "{root / name}"\n[tokenizer]\npath = "{model}"\nmax_seq_length = {BLOCK}\n'
                    f'[prepare]\nprogress = false\n[[sources]]\npath = "{src}"\n')
    return _child(PREP_CHILD, str(toml))


def _packing_rows(lengths: list[int], prepared: Path) -> list[dict]:
    from datasets import load_from_disk

    from train.data.pack import padded_efficiency
    from train.sft.collate import collate_blocks

    ds = load_from_disk(str(prepared / "train"))
    real = computed = 0
    for i in range(0, len(ds), BATCH):  # the collator's own batches of the real prepared blocks
        b = collate_blocks([ds[j] for j in range(i, min(i + BATCH, len(ds)))], pad_id=0)
        real += sum(len(ds[j]["input_ids"]) for j in range(i, min(i + BATCH, len(ds))))
        computed += b["input_ids"].numel()
    packed = real / computed
    padded = padded_efficiency(lengths, BLOCK, BATCH)
    return [{"name": "token efficiency, packed batches", "value": round(packed, 4), "baseline": round(padded, 4),
             "ratio": round(packed / padded, 3), "target": "packed >= 0.98 (baseline: padded batches)", "unit": "real/computed"}]


def run(quick: bool = True) -> list[dict]:
    """Benchmark rows (see module docstring)."""
    from train.tiny import make_tiny_model

    small, large = (20_000, 100_000) if quick else (100_000, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        sizes = {}
        for n in (small, large):
            src = root / f"src-{n}"
            src.mkdir()
            sizes[n] = (src, write_records(src, n))
        sample = [json.loads(line)["text"] for line in open(sizes[small][1][0])][:3000]
        model = make_tiny_model(root / "model", sample, vocab_size=8000)
        lengths_file = root / "lengths.json"
        raw_args = (str(model), str(lengths_file), *map(str, sizes[small][1]))
        # The baseline runs before and after the small prep, so a noisy neighbour hits both sides.
        raw = [_child(TOKENIZER_CHILD, *raw_args)]
        rss, prep = {}, {}
        for n, (src, _) in sizes.items():
            prep[n] = _prep(root, model, src, f"out-{n}")
            rss[n] = prep[n]["maxrss_kb"] / 1024
            if n == small:
                raw.append(_child(TOKENIZER_CHILD, *raw_args))
        lengths = json.loads(lengths_file.read_text())
        prep_tps = prep[small]["tokens"] / prep[small]["wall"]
        raw_tps = sum(r["tokens"] for r in raw) / sum(r["wall"] for r in raw)
        rows = [
            {"name": f"prep peak RSS, {large:,} records", "value": round(rss[large], 1), "baseline": round(rss[small], 1),
             "ratio": round(rss[large] / rss[small], 3), "target": f"ratio <= 1.2 vs {small:,} records; both < 2048 MB",
             "unit": "MB"},
            {"name": f"prep peak RSS, {small:,} records", "value": round(rss[small], 1), "baseline": None,
             "ratio": None, "target": "< 2048 MB", "unit": "MB"},
            {"name": f"prep throughput, {small:,} records", "value": round(prep_tps), "baseline": round(raw_tps),
             "ratio": round(prep_tps / raw_tps, 3), "target": ">= 0.8x raw batched fast tokenizer", "unit": "tokens/s"},
        ]
        rows += _packing_rows(lengths, root / f"out-{small}")
        return rows


if __name__ == "__main__":
    for row in run(quick="--full" not in sys.argv):
        print(json.dumps(row))
