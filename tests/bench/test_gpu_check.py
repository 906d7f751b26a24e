"""The GPU check's CPU-side parts (bench/gpu): arguments, the refusal without a GPU, the report
writer, reading a run's log, the wheel set and its resolver, the probe, the baseline's plumbing.

Nothing here pretends a GPU: the GPU parts run only on a machine that has one (bench/gpu_check.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from bench.gpu import build, check, report, wheels

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# --- arguments ----------------------------------------------------------------------------------------

def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = check.parse_args([])
    assert a.out == tmp_path / "bench-out" / "gpu-check"
    assert a.work == tmp_path / "bench-out" / "gpu-check-work"  # next to --out, not inside it
    assert a.parts == list(check.PARTS)
    assert (a.batch, a.steps, a.seq, a.oom_batch, a.model_size) == (8, 20, 1024, 1024, "1b")
    assert a.wheels == ROOT / "bench" / "gpu" / "wheels"


def test_parts_are_run_in_their_order(tmp_path):
    a = check.parse_args(["--out", str(tmp_path / "o"), "--parts", "oom, launch"])
    assert a.parts == ["launch", "oom"]


@pytest.mark.parametrize("argv, message", [
    (["--parts", "launch,gpu"], "unknown part gpu"),
    (["--parts", ","], "no part named"),
    (["--steps", "3"], "--steps must be at least 4"),
    (["--oom-batch", "8"], "--oom-batch must be larger than --batch"),
    (["--batch", "0"], "--batch and --oom-batch must be >= 1"),
    (["--budget-s", "0"], "--budget-s must be positive"),
    (["--model-size", "7b"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        check.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_work_must_differ_from_out(tmp_path, capsys):
    with pytest.raises(SystemExit):
        check.parse_args(["--out", str(tmp_path), "--work", str(tmp_path)])
    assert "--work must differ from --out" in capsys.readouterr().err


def test_ctl_entry_is_one_of_the_two_clis():
    assert check.CTL[0] == sys.executable
    assert check.CTL[1:] in (["-m", "trainctl"], ["-m", "controller"])
    expected = "trainctl" if (ROOT / "trainctl" / "__main__.py").is_file() else "controller"
    assert check.CTL[2] == expected


# --- refusing without a GPU --------------------------------------------------------------------------

@pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA GPU: the check would run, not refuse")
def test_refuses_without_a_gpu_in_one_line(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(["bash", str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == check.EXIT_REFUSED
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("gpu-check: refused: no CUDA GPU here")
    assert "torch.cuda.is_available() is False" in lines[0]
    assert "Traceback" not in p.stderr + p.stdout
    assert p.stdout == ""
    assert not out.exists() and not (tmp_path / "out-work").exists()  # nothing written


def test_refuses_when_no_python_has_torch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "python"):
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\nexit 1\n")
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 3
    assert p.stderr.strip().splitlines() == [
        "gpu-check: refused: no python3/python here imports torch (set PYTHON=/path/to/python). Nothing was run."]


def test_bad_arguments_through_the_script(tmp_path):
    p = subprocess.run(["bash", str(SCRIPT), "--parts", "nope"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 2
    assert "unknown part nope" in p.stderr and "Traceback" not in p.stderr


# --- the report --------------------------------------------------------------------------------------

def _result():
    r = report.row
    return {
        "meta": {"date": "2026-12-01 10:00 UTC", "gpu": "NVIDIA H200 (140 GiB, sm 9.0)", "torch": "2.13.0",
                 "notes": ["unmet: datasets needs fsspec<=2026.9.0 (have 2027.1.0)"]},
        "parts": {
            "setup": {"status": "passed", "seconds": 12.0, "error": None,
                      "rows": [r("wheels unpacked", ["bitsandbytes", "datasets"])]},
            "launch": {"status": "failed", "seconds": 61.5, "error": None, "rows": [
                r("compute_dtype = auto resolved to", "float16", reference="bfloat16", ok=False),
                r("optim = auto resolved to", "PagedAdamW8bit", reference="PagedAdamW8bit", ok=True),
                r("note with | pipe", "a|b", note="x|y")]},
            "throughput": {"status": "passed", "seconds": 150.0, "error": None, "rows": [
                r("tokens/s, trainctl", 41234.5, reference=36600.0, ratio=41234.5 / 36600.0),
                r("torch peak allocated vs ctl train estimate", 9.5, unit="GiB", reference=10.25,
                  ratio=9.5 / 10.25)]},
            "oom": {"status": "skipped", "seconds": 0, "error": "time budget: 20s left", "rows": []},
        },
    }


def test_report_writes_json_and_markdown(tmp_path):
    res = _result()
    jpath, mpath = report.write_report(res, tmp_path / "out")
    assert (jpath.name, mpath.name) == ("gpu-check.json", "gpu-check.md")
    doc = json.loads(jpath.read_text())
    assert doc["overall"] == "failed"
    assert doc["parts"] == res["parts"] and doc["meta"] == res["meta"]
    md = mpath.read_text()
    assert md.startswith("# trainctl GPU check\n\n**failed** on NVIDIA H200 (140 GiB, sm 9.0), 2026-12-01 10:00 UTC")
    assert "| part | item | value | reference | ratio | result | note |" in md
    assert "| **launch** | | | | | failed in 62s |  |" in md
    assert "| | compute_dtype = auto resolved to | float16 | bfloat16 | - | FAIL |  |" in md
    assert "| | optim = auto resolved to | PagedAdamW8bit | PagedAdamW8bit | - | ok |  |" in md
    assert "| | tokens/s, trainctl | 4.123e+04 | 3.66e+04 | 1.13 |  |  |" in md
    assert "| | torch peak allocated vs ctl train estimate | 9.5 GiB | 10.25 GiB | 0.927 |  |  |" in md
    assert "| **oom** | | | | | skipped in 0s | time budget: 20s left |" in md
    assert "a\\|b" in md and "x\\|y" in md  # a pipe in a cell does not break the table
    assert "- note: unmet: datasets needs fsspec<=2026.9.0 (have 2027.1.0)" in md
    # Every table line has the same number of columns.
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert {ln.replace("\\|", "").count("|") for ln in table} == {8}


def test_overall():
    res = _result()
    assert report.overall(res) == "failed"
    res["parts"]["launch"]["status"] = "passed"
    assert report.overall(res) == "passed"  # skipped parts do not fail the check
    res["parts"]["throughput"]["status"] = "error"
    assert report.overall(res) == "failed"
    assert report.overall({"parts": {"oom": {"status": "skipped"}}}) == "not run"


def test_part_status_and_ratio():
    assert report.part_status([report.row("a", 1, ok=True), report.row("b", 2)]) == "passed"
    assert report.part_status([report.row("a", 1, ok=False)]) == "failed"
    assert report.part_status([report.row("a", 1, ok=True)], error="boom") == "error"
    assert report.ratio(3, 2) == 1.5
    assert report.ratio(None, 2) is None and report.ratio(3, 0) is None


def test_report_refuses_an_unknown_status(tmp_path):
    res = _result()
    res["parts"]["oom"]["status"] = "maybe"
    with pytest.raises(ValueError, match="oom: status 'maybe'"):
        report.write_report(res, tmp_path)
    assert not (tmp_path / "gpu-check.json").exists()


# --- reading a run back ------------------------------------------------------------------------------

LOG = """\
resolved config (output_dir = /w/runs/gpucheck-tiny-20261201-100000/output):

[model]
path = "/w/tiny-model"
attn_implementation = "auto"

[quant]
load_in_4bit = true
compute_dtype = "auto"

[train]
per_device_batch_size = 4
optim = "auto"
gradient_checkpointing = true

Loading weights: 100%|██████████| 21/21
step 1/5 epoch 0.016 loss 7.5063 lr 0.005 tokens/s 1567
step 2/5 epoch 0.033 loss 7.4894 lr 0.0049 tokens/s 29340
step 3/5 epoch 0.049 loss 7.3965 lr 0.0046 tokens/s 31521
step 4/5 epoch 0.066 loss 7.2673 lr 0.00414 tokens/s 31990
step 5/5 epoch 0.082 loss nan lr 0 tokens/s 1000
eval loss 7.1495 at step 5
"""


def test_parse_resolved_reads_the_logged_config():
    assert check.parse_resolved(LOG) == {"attn_implementation": "auto", "compute_dtype": "auto", "optim": "auto"}
    assert check.parse_resolved("no config here") == {}
    concrete = LOG.replace('compute_dtype = "auto"', 'compute_dtype = "bfloat16"  # resolved')
    assert check.parse_resolved(concrete)["compute_dtype"] == "bfloat16"


def test_step_rates_and_median():
    rates = check.step_rates(LOG)
    assert rates == [(1, 1567.0), (2, 29340.0), (3, 31521.0), (4, 31990.0), (5, 1000.0)]
    assert check.median_rate(rates) == 31521.0  # steps 1-2 are warm-up
    assert check.median_rate(rates[:2]) is None


def test_gpu_rows_against_nvidia_smi():
    smi = [{"index": "0", "name": "NVIDIA H200", "mem_total_mib": 143771, "mem_used_mib": 0, "driver": "570"}]
    gpu = {"index": 0, "name": "NVIDIA H200", "util_percent": 87, "mem_used_mib": 5120, "mem_total_mib": 143771,
           "temp_c": 40}
    samples = [{"seq": 1, "gpus": [{**gpu, "util_percent": 0, "mem_used_mib": 600}]}, {"seq": 2, "gpus": [gpu]}]
    rows = {r["item"]: r for r in check.gpu_rows(samples, smi)}
    assert all(r["ok"] for r in rows.values()), rows
    assert rows["GPU memory used, max over heartbeats"]["value"] == 5120
    assert rows["GPU utilisation, max over heartbeats"]["value"] == 87
    none = check.gpu_rows([{"seq": 1, "gpus": []}, {"seq": 2, "gpus": [{"error": "nvidia-smi failed"}]}], smi)
    assert [r["ok"] for r in none] == [False, False]
    assert none[1]["value"] == "nvidia-smi failed"


def test_resolved_rows_compare_with_what_the_gpu_should_give():
    ctx = check.Ctx(args=None, env={}, facts={"bf16": True, "flash_attn": False})
    note = {"models": [{"attn_implementation": "sdpa", "bnb_4bit_compute_dtype": "bfloat16"}],
            "optimizers": ["bitsandbytes.optim.adamw.PagedAdamW8bit"]}
    rows = check.resolved_rows(ctx, note, LOG)
    assert [r["ok"] for r in rows] == [True, True, True, None]
    assert rows[3]["value"] == "attn_implementation=auto, compute_dtype=auto, optim=auto"
    cpu = {"models": [{"attn_implementation": "sdpa", "bnb_4bit_compute_dtype": "float32"}],
           "optimizers": ["torch.optim.adamw.AdamW"]}
    assert [r["ok"] for r in check.resolved_rows(ctx, cpu, LOG)][:2] == [False, False]


def test_json_out_takes_the_last_document():
    p = subprocess.CompletedProcess([], 0, 'memory estimate: fits\n{\n  "total": 5,\n  "fits": true\n}\n', "")
    assert check.json_out(p) == {"total": 5, "fits": True}
    assert check.json_out(subprocess.CompletedProcess([], 0, "Loading...\n{\"a\": 1}\n", "")) == {"a": 1}
    assert check.json_out(subprocess.CompletedProcess([], 0, "no json", "")) is None


# --- the wheel set -----------------------------------------------------------------------------------

def test_roots_are_trainctls_declared_dependencies():
    """The resolver starts from what pyproject.toml declares: a dependency moved or dropped there shows here."""
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {wheels.canon(d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip())
                for d in [*proj["dependencies"], *proj["optional-dependencies"]["train"],
                          *proj["optional-dependencies"]["agent"]]}
    from packaging.requirements import Requirement

    roots = {wheels.canon(Requirement(r).name) for r in wheels.ROOTS}
    assert roots <= declared, roots - declared


def test_every_root_that_a_bare_box_lacks_has_a_spec():
    shipped = {wheels.canon(s.name) for s in wheels.SPECS}
    box = set(wheels.BOX_HAS)
    from packaging.requirements import Requirement

    for r in wheels.ROOTS:
        name = wheels.canon(Requirement(r).name)
        assert name in shipped or name in box or name in {"tokenizers", "psutil"}, name


REQ = {
    "app": ("app-1.0-py3-none-any.whl", "1.0", ["lib>=2", "old<1; python_version < '3'", "doc; extra == 'docs'"]),
    "lib": ("lib-2.1-py3-none-any.whl", "2.1", ["base>=1.5"]),
    "base": ("base-1.6-py3-none-any.whl", "1.6", []),
}


def test_resolve_installs_what_is_missing_with_its_requirements():
    plan = wheels.resolve(["app>=1"], {}, REQ)
    assert sorted(plan.install) == ["app", "base", "lib"]
    assert plan.unmet == []


def test_resolve_uses_what_the_box_has_when_it_satisfies():
    plan = wheels.resolve(["app>=1"], {"lib": "3.0", "base": "1.0"}, REQ)
    assert sorted(plan.install) == ["app"]  # lib 3.0 satisfies lib>=2; its own needs are the box's business
    assert plan.present == {"lib": "3.0"}
    plan = wheels.resolve(["app>=1"], {"lib": "1.0", "base": "1.0"}, REQ)
    assert sorted(plan.install) == ["app", "base", "lib"]  # too old: both replaced from the wheels


def test_resolve_reports_what_nothing_satisfies():
    plan = wheels.resolve(["app>=2", "torch>=2.4"], {"torch": "2.1"}, REQ)
    assert plan.install == {}
    assert plan.unmet == ["trainctl needs app>=2 (not installed, the wheel is 1.0)",
                          "trainctl needs torch>=2.4 (have 2.1)"]


def _make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes], requires=(), tag="py3-none-any"):
    path = folder / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires) + "\nlong description\nRequires-Dist: not-a-header\n"
    members = {**files, f"{info}/METADATA": meta.encode(), f"{info}/WHEEL": b"Wheel-Version: 1.0\n"}
    record = "".join(f"{n},sha256=x,{len(d)}\n" for n, d in members.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in {**members, f"{info}/RECORD": record.encode()}.items():
            z.writestr(n, d)
    return path


def test_wheel_requires_reads_only_the_headers(tmp_path):
    w = _make_wheel(tmp_path, "app", "1.0", {"app/__init__.py": b""}, requires=["lib>=2"])
    assert wheels.wheel_requires(w) == ["lib>=2"]
    assert wheels.wheel_name_version(w.name) == ("app", "1.0")
    with pytest.raises(ValueError):
        wheels.wheel_name_version("app-1.0.tar.gz")


def test_wheel_fits_this_interpreter():
    from packaging.tags import sys_tags

    tags = list(sys_tags())
    assert wheels.wheel_fits("x-1.0-py3-none-any.whl", tags)
    assert not wheels.wheel_fits("x-1.0-cp27-cp27m-manylinux1_x86_64.whl", tags)


def test_unpack_places_files_as_an_installer_does(tmp_path):
    w = _make_wheel(tmp_path, "app", "1.0", {"app/__init__.py": b"VALUE = 42\n",
                                             "app-1.0.data/purelib/app_extra.py": b"X = 1\n",
                                             "app-1.0.data/scripts/app": b"#!/bin/sh\n"})
    site = tmp_path / "site"
    assert wheels.unpack(w, site) == 5  # __init__, app_extra, METADATA, WHEEL, RECORD; scripts skipped
    assert (site / "app" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (site / "app_extra.py").is_file() and not (site / "app").joinpath("app").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    evil = _make_wheel(bad, "evil", "1.0", {"../escape.py": b""})
    with pytest.raises(ValueError, match="unsafe member"):
        wheels.unpack(evil, tmp_path / "site2")


def test_trim_drops_members_and_their_record_lines(tmp_path):
    src = _make_wheel(tmp_path, "big", "1.0", {"big/__init__.py": b"", "big/libbig_cuda118.so": b"\0" * 5000,
                                               "big/libbig_cuda128.so": b"\1" * 5000, "big/tests/t.py": b""})
    out = tmp_path / "out"
    out.mkdir()
    size, dropped = wheels.trim(src, out / src.name, (r"big/libbig_cuda11.*", r"big/tests/.*"))
    assert sorted(dropped) == ["big/libbig_cuda118.so", "big/tests/t.py"]
    with zipfile.ZipFile(out / src.name) as z:
        names = set(z.namelist())
        record = z.read("big-1.0.dist-info/RECORD").decode()
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())
    assert "big/libbig_cuda128.so" in names and "big/libbig_cuda118.so" not in names
    assert "libbig_cuda118" not in record and "big/libbig_cuda128.so" in record
    assert size == (out / src.name).stat().st_size


def test_install_unpacks_only_the_missing_wheels_and_they_import(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    _make_wheel(folder, "gpucheck_fake_app", "1.0", {"gpucheck_fake_app/__init__.py": b"from gpucheck_fake_lib import V\n"},
                requires=["gpucheck-fake-lib>=2", "packaging"])
    _make_wheel(folder, "gpucheck_fake_lib", "2.0", {"gpucheck_fake_lib/__init__.py": b"V = 'lib 2.0'\n"})
    _make_wheel(folder, "gpucheck_fake_bin", "1.0", {"gpucheck_fake_bin/__init__.py": b""},
                tag="cp27-cp27m-manylinux1_x86_64")
    site = tmp_path / "site"
    plan = wheels.install(folder, site, roots=["gpucheck-fake-app>=1", "gpucheck-fake-bin"])
    assert sorted(plan.install) == ["gpucheck-fake-app", "gpucheck-fake-lib"]
    assert "packaging" in plan.present  # this interpreter has it: not unpacked
    assert any("does not fit this interpreter" in u for u in plan.unmet), plan.unmet
    p = subprocess.run([sys.executable, "-c", "import gpucheck_fake_app as a; print(a.V)"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(site)}, timeout=60)
    assert p.stdout.strip() == "lib 2.0", p.stderr


@pytest.mark.parametrize("torch_cuda, libs, want", [
    ("12.8", ["libbitsandbytes_cuda126.so", "libbitsandbytes_cuda128.so"], None),
    ("12.9", ["libbitsandbytes_cuda126.so", "libbitsandbytes_cuda128.so", "libbitsandbytes_cuda130.so"], "128"),
    ("13.1", ["libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so"], "130"),
    ("11.8", ["libbitsandbytes_cuda126.so"], None),
    ("12.4", ["libbitsandbytes_cuda126.so", "libbitsandbytes_cpu.so"], None),
    (None, ["libbitsandbytes_cuda126.so"], None),
])
def test_bnb_cuda_override(torch_cuda, libs, want):
    assert wheels.bnb_cuda_override(torch_cuda, libs) == want


def test_the_default_trim_keeps_the_cuda_builds_a_current_torch_uses():
    import re

    pat = re.compile(wheels.BNB_DROP_DEFAULT)
    for kept in ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda126.so", "libbitsandbytes_cuda128.so",
                 "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so", "__init__.py", "nn/modules.py"):
        assert not pat.fullmatch(f"bitsandbytes/{kept}"), kept
    for dropped in ("libbitsandbytes_cuda118.so", "libbitsandbytes_cuda124.so", "libbitsandbytes_rocm72.so",
                    "libbitsandbytes_xpu2025.so"):
        assert pat.fullmatch(f"bitsandbytes/{dropped}"), dropped


def test_size_table_totals():
    rows = [{"file": "a.whl", "why": "x", "original_bytes": 3 * 2**20, "bytes": 2**20},
            {"file": "b.whl", "why": "y", "original_bytes": 2**20, "bytes": 2**20}]
    last = wheels.size_table(rows).splitlines()[-1].split()
    assert last == ["total", "4.00", "2.00"]


# --- the probe, the builders, the baseline -----------------------------------------------------------

PROBED = """
import torch
from transformers import MistralConfig, MistralForCausalLM
cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8)
MistralForCausalLM(cfg).save_pretrained({out!r})
m = MistralForCausalLM.from_pretrained({out!r}, attn_implementation="sdpa")
torch.optim.AdamW(m.parameters(), lr=1e-3)
"""


def test_probe_notes_what_a_trainer_resolved(tmp_path):
    code = PROBED.format(out=str(tmp_path / "m"))
    env = {**os.environ, "PYTHONPATH": str(check.PROBE_DIR), "TRAINCTL_GPU_PROBE_DIR": str(tmp_path / "probe"),
           "TRAINCTL_RUN_ID": "gpucheck-probe-20261201-100000", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert p.returncode == 0, p.stderr
    notes = list((tmp_path / "probe").glob("*.json"))
    assert len(notes) == 1
    note = json.loads(notes[0].read_text())
    assert note["run_id"] == "gpucheck-probe-20261201-100000"
    assert note["models"] == [{"class": "MistralForCausalLM", "attn_implementation": "sdpa",
                               "bnb_4bit_compute_dtype": None, "load_in_4bit": False, "dtype": "float32"}]
    assert note["optimizers"] == ["torch.optim.adamw.AdamW"]
    assert note["cuda"] is None and "probe_errors" not in note
    # Without the variable the probe stays out of the way: nothing written.
    env["TRAINCTL_GPU_PROBE_DIR"] = ""
    quiet = "import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)])"
    p = subprocess.run([sys.executable, "-c", quiet], capture_output=True, text=True, env=env, timeout=180)
    assert p.returncode == 0 and len(list((tmp_path / "probe").glob("*.json"))) == 1


def test_param_count_matches_the_model():
    from transformers import MistralConfig, MistralForCausalLM

    shape = build.SIZES["tiny"]
    cfg = MistralConfig(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"], tie_word_embeddings=False)
    assert build.param_count(shape) == sum(p.numel() for p in MistralForCausalLM(cfg).parameters())
    assert 1.0e9 < build.param_count(build.SIZES["1b"]) < 1.2e9


def test_synthetic_records_are_distinct_and_deterministic():
    a, b = list(build.synthetic_records(50, seed=3)), list(build.synthetic_records(50, seed=3))
    assert a == b
    assert len({r["text"] for r in a}) == 50
    assert list(build.synthetic_records(5, seed=4)) != a[:5]


@pytest.mark.slow
def test_hf_baseline_runs_end_to_end_on_cpu(tmp_path):
    """The baseline's plumbing on the CPU (torch AdamW, float32): on the GPU it is the same code with paged 8-bit AdamW."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{f"w{i}": i + 4 for i in range(60)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(tmp_path / "tok")
    info = build.build_model(tmp_path / "model", tmp_path / "tok", size="tiny")
    assert info["params"] == build.param_count(build.SIZES["tiny"])
    rows = [[4 + (i * 7 + j) % 60 for j in range(64)] for i in range(8)]
    Dataset.from_dict({"input_ids": rows, "seq_lengths": [[64]] * 8}).save_to_disk(str(tmp_path / "data"))
    p = subprocess.run([sys.executable, "-m", "bench.gpu.hf_baseline", "--model", str(tmp_path / "model"), "--data",
                        str(tmp_path / "data"), "--batch", "2", "--steps", "4", "--optim", "adamw_torch", "--dtype",
                        "float32", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "b.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["steps"] == 4 and len(res["step_seconds"]) == 4
    assert res["tokens_per_step"] == 2 * 63  # two rows of 64, each row's first token has no label
    assert res["tokens_per_s"] > 0


def test_hf_baseline_median_leaves_out_warmup():
    from bench.gpu import hf_baseline

    assert hf_baseline.median_rate([100, 100, 100, 100, 100], [10.0, 1.0, 1.0, 2.0, 1.0]) == 100.0
    assert hf_baseline.median_rate([100, 100], [1.0, 1.0]) is None
