"""The GPU check's observer: what a trainer process really resolved and how much GPU memory it took.

trainctl's own record keeps `auto` for compute_dtype, optim and attn_implementation (the resolved
config is the config as written), so the check needs another witness. With this folder first on
PYTHONPATH and TRAINCTL_GPU_PROBE_DIR set, every Python process notes, without changing anything it
does: each model `from_pretrained` returns (its bnb compute dtype, attention implementation, dtype),
each optimizer constructed (its class), and at exit torch's peak CUDA memory, when it used CUDA.
The notes go to $TRAINCTL_GPU_PROBE_DIR/<pid>.json; a process that did none of this writes nothing.
Without the variable this file does nothing but hand over to any other sitecustomize on the path.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.util
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_DIR = os.environ.get("TRAINCTL_GPU_PROBE_DIR")
_NOTES: dict = {"models": [], "optimizers": []}


def _dtype_name(v) -> str | None:
    return None if v is None else str(v).replace("torch.", "")


def _note_model(model) -> None:
    cfg = getattr(model, "config", None)
    q = getattr(cfg, "quantization_config", None)
    compute = getattr(q, "bnb_4bit_compute_dtype", None) if q is not None else None
    if compute is None and isinstance(q, dict):
        compute = q.get("bnb_4bit_compute_dtype")
    _NOTES["models"].append({
        "class": type(model).__name__,
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "bnb_4bit_compute_dtype": _dtype_name(compute),
        "load_in_4bit": bool(getattr(q, "load_in_4bit", False)) if q is not None else False,
        "dtype": _dtype_name(getattr(model, "dtype", None)),
    })


def _patch_modeling_utils(mod) -> None:
    cls = mod.PreTrainedModel
    orig = cls.from_pretrained.__func__

    @functools.wraps(orig)
    def from_pretrained(klass, *args, **kwargs):
        out = orig(klass, *args, **kwargs)
        try:
            _note_model(out[0] if isinstance(out, tuple) else out)
        except Exception as exc:  # an observer never breaks the observed
            _NOTES.setdefault("probe_errors", []).append(repr(exc)[:200])
        return out

    cls.from_pretrained = classmethod(from_pretrained)


def _patch_optimizer(mod) -> None:
    cls = mod.Optimizer
    orig = cls.__init__

    @functools.wraps(orig)
    def __init__(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        if name not in _NOTES["optimizers"]:
            _NOTES["optimizers"].append(name)

    cls.__init__ = __init__


_TARGETS = {"transformers.modeling_utils": _patch_modeling_utils, "torch.optim.optimizer": _patch_optimizer}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch right after a target module executes (so nothing is imported early)."""

    def find_spec(self, name, path=None, target=None):
        patch = _TARGETS.get(name)
        if patch is None:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            try:
                patch(module)
            except Exception as exc:
                _NOTES.setdefault("probe_errors", []).append(f"{name}: {exc!r}"[:200])

        spec.loader.exec_module = exec_module
        return spec


def _write() -> None:
    torch = sys.modules.get("torch")
    cuda = None
    try:
        if torch is not None and torch.cuda.is_initialized():
            cuda = {"device": torch.cuda.get_device_name(0),
                    "max_allocated_bytes": int(torch.cuda.max_memory_allocated()),
                    "max_reserved_bytes": int(torch.cuda.max_memory_reserved())}
    except Exception as exc:
        _NOTES.setdefault("probe_errors", []).append(f"cuda: {exc!r}"[:200])
    if not (_NOTES["models"] or _NOTES["optimizers"] or cuda):
        return
    note = {"pid": os.getpid(), "argv": sys.argv, "ts": time.time(), "run_id": os.environ.get("TRAINCTL_RUN_ID"),
            "rank": os.environ.get("RANK"), "cuda": cuda, **_NOTES}
    try:
        os.makedirs(_DIR, exist_ok=True)
        tmp = os.path.join(_DIR, f".{os.getpid()}.json.part")
        with open(tmp, "w") as fh:
            json.dump(note, fh, indent=1)
        os.replace(tmp, os.path.join(_DIR, f"{os.getpid()}.json"))
    except OSError:
        pass


def _chain() -> None:
    """Run the sitecustomize this one shadows, if the interpreter has one further down the path."""
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == _HERE:
            continue
        cand = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(cand):
            try:
                with open(cand) as fh:
                    exec(compile(fh.read(), cand, "exec"), {"__name__": "sitecustomize", "__file__": cand})
            except Exception as exc:
                print(f"gpu-check probe: {cand} failed: {exc!r}", file=sys.stderr)
            return


if _DIR:
    sys.meta_path.insert(0, _AfterImport())
    atexit.register(_write)
_chain()
