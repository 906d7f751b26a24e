"""The S3 backend (AWS, moto's server, or any S3-compatible store via an endpoint).

Create-only and compare-and-set are S3 conditional writes (`IfNoneMatch="*"`, `IfMatch=etag`).
Single calls retry through botocore's standard retry mode; large files use boto3's managed
transfer (multipart, parallel parts).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlencode

from agent.protocol import awserrors
from agent.protocol.errors import NotFound, StoreError, StoreRefused
from agent.protocol.store import Store, Versioned

# A precondition failure is the expected "someone else got there first", not an error.
_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_ABSENT = {"NoSuchKey", "404", "NotFound"}


def s3_client(endpoint_url: str | None = None, region: str | None = None, profile: str | None = None,
              max_attempts: int | None = None, timeout: float | None = None):
    """A boto3 S3 client honouring the usual AWS settings plus an explicit endpoint.

    `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` are read by boto3 itself when no endpoint is given.
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
    retries = {"mode": "standard"}
    if max_attempts:
        retries["max_attempts"] = max_attempts
    cfg = Config(retries=retries, connect_timeout=timeout or 10, read_timeout=timeout or 30,
                 s3={"addressing_style": "path"} if endpoint_url else None)
    return session.client("s3", endpoint_url=endpoint_url, region_name=region or session.region_name or "us-east-1",
                          config=cfg)


def _code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _status(exc) -> str:
    return str(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class S3Store(Store):
    """A store under `s3://bucket/prefix`."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, profile: str | None = None, client=None,
                 max_attempts: int | None = None, timeout: float | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        try:
            self.client = client or s3_client(endpoint_url, region, profile, max_attempts, timeout)
        except Exception as exc:  # a profile that is not there, a broken ~/.aws/config
            if not awserrors.is_botocore(exc):
                raise
            raise StoreRefused(f"S3 store {self.url}: {awserrors.one_line(exc)}") from None

    def _k(self, key: str) -> str:
        if not key or key.startswith("/") or "/../" in f"/{key}/":
            raise StoreError(f"invalid store key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unk(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _fail(self, what: str, key: str, exc) -> StoreError:
        """One line naming the fix; StoreRefused when retrying cannot help (the agent refuses the run)."""
        region = self.region or getattr(getattr(self.client, "meta", None), "region_name", None)
        line = awserrors.one_line(exc, region=None if self.endpoint_url else region)
        cls = StoreRefused if awserrors.permanent(exc) else StoreError
        return cls(f"S3 {what} {self.location(key)} failed: {line}")

    def put(self, key: str, data: bytes, tags: dict[str, str] | None = None) -> None:
        extra = {"Tagging": urlencode(tags)} if tags else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **extra)
        except Exception as exc:  # botocore raises many types; all mean "not stored"
            raise self._fail("put", key, exc) from exc

    def get(self, key: str) -> bytes | None:
        v = self.get_versioned(key)
        return None if v is None else v.data

    def get_versioned(self, key: str) -> Versioned | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            return Versioned(resp["Body"].read(), resp["ETag"].strip('"'))
        except Exception as exc:
            if _code(exc) in _ABSENT:
                return None
            raise self._fail("get", key, exc) from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
            return True
        except Exception as exc:
            if _code(exc) in _LOST_RACE or _status(exc) in ("412", "409"):
                return False
            raise self._fail("create-only put", key, exc) from exc

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, IfMatch=f'"{etag}"')
            return True
        except Exception as exc:
            if _code(exc) in _LOST_RACE | _ABSENT or _status(exc) in ("412", "409", "404"):
                return False
            raise self._fail("compare-and-set put", key, exc) from exc

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        kwargs = {"Bucket": self.bucket, "Prefix": self._k(prefix) if prefix else (self.prefix + "/" if self.prefix else "")}
        if start_after:
            kwargs["StartAfter"] = self._k(start_after)
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", []):
                    yield self._unk(obj["Key"])
        except Exception as exc:
            raise self._fail("list", prefix or "", exc) from exc

    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        p = prefix.strip("/")
        full = "/".join(x for x in (self.prefix, p) if x)
        full = full + "/" if full else ""
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    yield cp["Prefix"][len(full):].rstrip("/")
        except Exception as exc:
            raise self._fail("list", prefix or "", exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        keys = [self._k(k) for k in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def upload_file(self, key: str, path) -> None:
        try:
            self.client.upload_file(os.fspath(path), self.bucket, self._k(key))
        except Exception as exc:
            raise self._fail("upload", key, exc) from exc

    def download_file(self, key: str, path) -> None:
        try:
            self.client.download_file(self.bucket, self._k(key), os.fspath(path))
        except Exception as exc:
            if _code(exc) in _ABSENT:
                raise NotFound(f"{self.location(key)} does not exist") from exc
            raise self._fail("download", key, exc) from exc

    def size_and_etag(self, key: str) -> tuple[int, str] | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return resp["ContentLength"], resp["ETag"].strip('"')
        except Exception as exc:
            if _code(exc) in _ABSENT:
                return None
            raise self._fail("head", key, exc) from exc

    def console_url(self, prefix: str) -> str | None:
        full = "/".join(x for x in (self.prefix, prefix.strip("/")) if x) + "/"
        region = self.region or getattr(self.client.meta, "region_name", None) or "us-east-1"
        return f"https://s3.console.aws.amazon.com/s3/buckets/{self.bucket}?region={region}&prefix={full}"
