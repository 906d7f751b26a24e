"""Docs that are generated must match what generates them."""

from pathlib import Path

from controller.reference import CAUSE_MEANING, render, render_runbook, rows

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    on_disk = (ROOT / "docs" / "config-reference.md").read_text()
    assert on_disk == render(), "docs/config-reference.md is stale: run `.venv/bin/python -m controller.reference > docs/config-reference.md`"


def test_reference_covers_every_key():
    from controller.config import RunConfig
    from train.schemas import TrainConfig

    keys = {k for k, *_ in rows(RunConfig)}
    assert {"instance.id", "ssh.user", "box.data_root", "store.url", "agent.heartbeat_s"} <= keys
    tkeys = {k for k, *_ in rows(TrainConfig)}
    assert {"lora.r", "train.learning_rate", "quant.quant_type", "debug.inject_nan_at_step"} <= tkeys


def test_runbook_is_current_and_complete():
    from agent.protocol.causes import REMEDIATION

    on_disk = (ROOT / "docs" / "runbook.md").read_text()
    assert on_disk == render_runbook(), "docs/runbook.md is stale: run `.venv/bin/python -m controller.reference runbook > docs/runbook.md`"
    assert set(CAUSE_MEANING) == set(REMEDIATION), "every classifier cause needs a meaning in the runbook"


def test_remediation_texts_name_only_real_config_keys():
    # The seeds' config drift, in words: a fix that names a knob the config does not have is worse than none.
    import re

    from agent.protocol.causes import REMEDIATION
    from train.schemas import DataConfig, TrainConfig

    keys = {k for k, *_ in rows(TrainConfig)} | {k for k, *_ in rows(DataConfig)}
    sections = {k.split(".")[0] for k in keys}
    named = set()
    for text in REMEDIATION.values():
        for m in re.finditer(r"\b([a-z_]+)\.([a-z_0-9]+)\b", text):
            if m.group(1) in sections:
                named.add(m.group(0))
    assert named, "remediation texts should name the config keys to change"
    assert named <= keys, f"remediation names keys the config does not have: {sorted(named - keys)}"
