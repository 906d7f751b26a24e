"""Is this folder a whole saved model? Checked before any model is loaded (sft, estimate, prepare).

transformers answers a folder with a config but no weights, or no tokenizer, with a 40-line
traceback deep in from_pretrained; these checks say the same in one line with the fix, reading
only file names (and a sharded checkpoint's index), so they cost microseconds and need no torch.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "consolidated*.pth")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_FIX = "copy the whole saved model folder (save_pretrained, or stage.model from S3) and point model.path at it"


def _shards_problem(p: Path) -> str | None:
    for name in _INDEXES:
        index = p / name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            except (OSError, ValueError):
                return f"{index} is not readable JSON: {_FIX}"
            missing = sorted(s for s in shards if not (p / s).is_file())
            if missing:
                return f"{p} lacks {len(missing)} weight shard(s) its {name} lists (first: {missing[0]}): {_FIX}"
    return None


def names_problem(names: set[str], where: str, *, weights: bool = True, tokenizer: bool = True,
                  fix: str = _FIX) -> str | None:
    """The same checks on the file names of a folder (a local one, a folder on the box, or an S3
    prefix about to be staged); `fix` is what to do about a folder that is not a whole model."""
    if weights and "config.json" not in names:
        return f"{where} has no config.json; is it a saved model folder? {fix}"
    if weights and not (set(_INDEXES) & names or any(fnmatch(n, g) for n in names for g in _WEIGHT_GLOBS)):
        return f"{where} has no model weights (*.safetensors or pytorch_model*.bin): {fix}"
    if tokenizer and not ({"tokenizer.json", "tokenizer.model"} & names or {"vocab.json", "merges.txt"} <= names):
        return (f"{where} has no tokenizer (tokenizer.json, tokenizer.model, or vocab.json + merges.txt): save "
                f"the tokenizer into the folder too (tokenizer.save_pretrained(folder))")
    return None


def folder_problem(path: str, *, weights: bool, tokenizer: bool = True) -> str | None:
    """Why `path` is not a usable local model (`weights`) or tokenizer folder, else None."""
    if not path:
        return "not set; point it at a local model folder (staged from S3 by the controller)"
    p = Path(path).expanduser()
    if not p.is_dir():
        return f"model folder {p} does not exist (models are loaded from a local folder only)"
    names = {f.name for f in p.iterdir() if f.is_file()}
    if not weights and not names & {"config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model"}:
        return f"{p} holds no config.json or tokenizer files; is it a saved model folder?"
    return names_problem(names, str(p), weights=weights, tokenizer=tokenizer) or (
        _shards_problem(p) if weights else None)
