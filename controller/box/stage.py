"""Stage the model and data from S3 to the box's data volume. Runs ON the box (boxside.py).

A manifest next to the staged files records (size, ETag) per key as last downloaded; a file is
fetched again only when the object changed or the local copy is missing or truncated. Transfers
run in parallel, each a boto3 managed transfer (multipart for big shards).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlparse

from agent.protocol.atomic import write_atomic

MANIFEST = ".trainctl-manifest.json"


class StageError(Exception):
    """Staging cannot go on: one line naming what and the fix (boxside sends it to the controller)."""


def describe_failure(target: dict, exc: BaseException) -> str:
    """The one line for a failed stage of `target` (pure)."""
    what = f"stage {target['name']}"
    if isinstance(exc, PermissionError):
        folder = exc.filename or target["dest"]
        return (f"{what}: cannot write {folder} (permission denied as {_login()}): make it writable by that user "
                f"(sudo chown -R {_login()} {folder}), or set box.data_root to a folder it owns")
    if isinstance(exc, OSError) and exc.filename:
        return f"{what}: cannot write {exc.filename} ({exc.strerror}): free space or fix the folder, then launch again"
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    if code in ("NoSuchBucket", "AccessDenied", "403", "404"):
        return (f"{what}: {target['src']} cannot be read ({code}): check stage.{target['name']} and the box's "
                f"access to that bucket (instance profile, or store.forward_aws_credentials)")
    return f"{what}: fetching {target['src']} failed ({type(exc).__name__}: {exc}); launch again to retry"


def _login() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def stage_targets(model: str, data: str, data_root: str) -> list[dict]:
    """[(name, src, dest)] for the configured S3 prefixes (pure)."""
    out = []
    for name, uri, folder in (("model", model, "models"), ("data", data, "datasets")):
        if uri:
            leaf = uri.rstrip("/").rsplit("/", 1)[-1]
            out.append({"name": name, "src": uri, "dest": f"{data_root.rstrip('/')}/{folder}/{leaf}"})
    return out


def to_fetch(remote: dict[str, tuple[int, str]], manifest: dict[str, list], local_sizes: dict[str, int]) -> list[str]:
    """Relative keys whose object differs from what was staged, or whose local file is missing/short (pure)."""
    out = []
    for rel, (size, etag) in sorted(remote.items()):
        known = manifest.get(rel)
        if known is None or tuple(known) != (size, etag) or local_sizes.get(rel) != size:
            out.append(rel)
    return out


def _list(client, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    objs = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            rel = o["Key"][len(prefix):].lstrip("/")
            if rel and not o["Key"].endswith("/"):
                objs[rel] = (o["Size"], o["ETag"].strip('"'))
    return objs


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def stage_one(client, target: dict, workers: int, say=print) -> dict:
    """Bring `dest` up to date with `src`; returns counts for the launch summary."""
    u = urlparse(target["src"])
    bucket, prefix = u.netloc, u.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    dest = Path(target["dest"])
    remote = _list(client, bucket, prefix)
    if not remote:
        raise StageError(f"stage {target['name']}: nothing under {target['src']}: check stage.{target['name']} "
                         f"(the prefix holds the files, e.g. s3://bucket/models/name/)")
    dest.mkdir(parents=True, exist_ok=True)  # only once there is something to stage
    mpath = dest / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError):
        manifest = {}
    sizes = {rel: (dest / rel).stat().st_size for rel in remote if (dest / rel).is_file()}
    todo = to_fetch(remote, manifest, sizes)
    total = sum(remote[r][0] for r in todo)
    say(f"stage {target['name']}: {len(remote)} files, {len(remote) - len(todo)} up to date, "
        f"fetching {len(todo)} ({_fmt(total)}) from {target['src']}")
    done_bytes, t0 = 0, time.monotonic()

    def fetch(rel: str) -> str:
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        client.download_file(bucket, prefix + rel, str(tmp))
        os.replace(tmp, path)
        return rel

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, fut in enumerate(as_completed([pool.submit(fetch, r) for r in todo]), 1):
            rel = fut.result()
            manifest[rel] = list(remote[rel])
            done_bytes += remote[rel][0]
            rate = done_bytes / max(time.monotonic() - t0, 1e-6)
            say(f"  [{i}/{len(todo)}] {rel} ({_fmt(remote[rel][0])}, {_fmt(rate)}/s)")
    for rel in list(manifest):
        if rel not in remote:
            del manifest[rel]
    write_atomic(mpath, json.dumps(manifest, indent=1, sort_keys=True))
    return {"name": target["name"], "files": len(remote), "fetched": len(todo), "bytes": total}


def stage_all(spec: dict, say=print) -> list[dict]:
    """Box side: stage every target in `spec` with one S3 client."""
    from agent.protocol.store_s3 import s3_client

    client = s3_client(spec.get("endpoint_url") or None, spec.get("region") or None)
    out = []
    for target in spec["targets"]:
        try:
            out.append(stage_one(client, target, int(spec.get("workers", 8)), say))
        except StageError:
            raise
        except Exception as exc:  # OSError, botocore's errors: one line, not a box-side traceback
            raise StageError(describe_failure(target, exc)) from None
    return out
