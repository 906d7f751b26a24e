"""Every store operation against both backends: the local folder and S3 on moto's server."""

from __future__ import annotations

import threading

import pytest

from agent.protocol import records as p
from agent.protocol.errors import ConfigError, StoreError
from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from agent.protocol.store_s3 import S3Store
from agent.protocol.stores import open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


RUN = "mistral-20250804-171621"


def test_put_get_bytes_and_json(store):
    assert store.get("a/b.bin") is None
    store.put("a/b.bin", b"\x00\x01hello")
    assert store.get("a/b.bin") == b"\x00\x01hello"
    store.put("a/b.bin", b"replaced")
    assert store.get("a/b.bin") == b"replaced"
    store.put_json("a/c.json", {"x": [1, 2], "y": None})
    assert store.get_json("a/c.json") == {"x": [1, 2], "y": None}
    assert store.get_json("a/missing.json") is None


def test_create_only_put_has_one_winner(store):
    assert store.put_if_absent("r/_error", b"first") is True
    assert store.put_if_absent("r/_error", b"second") is False
    assert store.get("r/_error") == b"first"


def test_create_only_under_concurrency(store):
    wins = {}

    def claim(i):
        wins[i] = store.put_if_absent("r/claim", f"writer-{i}".encode())

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in wins.items() if won]
    assert len(winners) == 1 and len(wins) == 8
    assert store.get("r/claim").decode() == f"writer-{winners[0]}"


def test_compare_and_set(store):
    store.put("r/ledger.json", b"v1")
    v = store.get_versioned("r/ledger.json")
    assert v.data == b"v1"
    assert store.put_if_match("r/ledger.json", b"v2", v.etag) is True
    assert store.put_if_match("r/ledger.json", b"v3", v.etag) is False  # stale etag loses
    assert store.get("r/ledger.json") == b"v2"
    assert store.put_if_match("r/absent.json", b"x", v.etag) is False


def test_list_sorted_with_start_after_and_dirs(store):
    for k in ["r1/logs/00000002.log", "r1/logs/00000000.log", "r1/logs/00000001.log", "r1/metadata.json",
              "r2/metadata.json"]:
        store.put(k, k.encode())
    assert list(store.list("r1/logs/")) == ["r1/logs/00000000.log", "r1/logs/00000001.log", "r1/logs/00000002.log"]
    assert list(store.list("r1/logs/", start_after="r1/logs/00000000.log")) == [
        "r1/logs/00000001.log", "r1/logs/00000002.log"]
    assert list(store.list("r1/")) == ["r1/logs/00000000.log", "r1/logs/00000001.log", "r1/logs/00000002.log",
                                       "r1/metadata.json"]
    assert list(store.list_dirs("")) == ["r1", "r2"]
    assert list(store.list_dirs("r1")) == ["logs"]
    assert list(store.list("nothing/")) == []


def test_delete_and_delete_prefix(store):
    store.put("r/a", b"1")
    store.put("r/b/c", b"2")
    store.put("s/a", b"3")
    store.delete("r/a")
    store.delete("r/a")  # absent: not an error
    assert store.get("r/a") is None
    assert store.delete_prefix("r/") == 1
    assert list(store.list("r/")) == []
    assert store.get("s/a") == b"3"


def test_upload_download_size_etag(store, tmp_path):
    src = tmp_path / "adapter.bin"
    src.write_bytes(b"w" * 100_000)
    store.upload_file("r/artifacts/adapter/adapter.bin", src)
    size, etag = store.size_and_etag("r/artifacts/adapter/adapter.bin")
    assert size == 100_000 and etag
    dst = tmp_path / "back.bin"
    store.download_file("r/artifacts/adapter/adapter.bin", dst)
    assert dst.read_bytes() == src.read_bytes()
    assert store.size_and_etag("r/nope") is None
    assert store.exists("r/artifacts/adapter/adapter.bin") and not store.exists("r/nope")


def test_bad_keys_rejected(store):
    for bad in ["", "/abs", "a/../b"]:
        with pytest.raises(StoreError):
            store.put(bad, b"x")


def test_runstore_records_and_markers(store):
    rs = RunStore(store)
    rs.write_metadata(p.Metadata(run_id=RUN, created=1000.0, phase="running", instance_id="i-123"))
    rs.write_heartbeat(RUN, p.Heartbeat(ts=1010.0, seq=1, agent_pid=42, trainer_alive=True))
    rs.write_progress(RUN, p.Progress(ts=1011.0, step=5, total_steps=10, loss=1.5))
    assert rs.read_metadata(RUN).instance_id == "i-123"
    assert rs.read_heartbeat(RUN).seq == 1
    assert rs.read_progress(RUN).loss == 1.5
    assert rs.list_runs() == [RUN]
    assert rs.write_error(RUN, p.ErrorMarker(ts=1, cause="cuda_oom", remediation="reduce batch")) is True
    assert rs.write_error(RUN, p.ErrorMarker(ts=2, cause="unknown", remediation="")) is False
    assert rs.write_complete(RUN, p.CompleteMarker(ts=3, duration_s=1)) is False  # never both
    assert rs.read_error(RUN).cause == "cuda_oom"
    assert rs.read_complete(RUN) is None
    assert rs.request_stop(RUN, "alice") is True and rs.request_stop(RUN) is False
    assert rs.read_stop(RUN).requested_by == "alice"


def test_runstore_knows_where_every_record_lives(store):
    """finished / markers / stop_requested and the watcher's and resume's records, through RunStore only."""
    rs = RunStore(store)
    rs.write_metadata(p.Metadata(run_id=RUN, created=1000.0))
    assert not rs.finished(RUN) and rs.markers(RUN) == set() and not rs.stop_requested(RUN)
    assert rs.request_stop(RUN) and rs.stop_requested(RUN)
    assert rs.write_alerts(RUN, b"{}", None) and not rs.write_alerts(RUN, b"{}", None)  # create-only
    v = rs.read_alerts_versioned(RUN)
    assert rs.write_alerts(RUN, b'{"a": 1}', v.etag) and not rs.write_alerts(RUN, b"{}", v.etag)  # CAS
    assert rs.write_error(RUN, p.ErrorMarker(ts=1, cause="interrupted", remediation="resume"))
    assert rs.finished(RUN) and rs.markers(RUN) == {p.ERROR, p.ALERTS}
    assert rs.location(RUN, p.ERROR) == store.location(f"{RUN}/_error")
    # a resume's claim: `attempts/<n>/_error`, then the run is unfinished and its ledger archived
    old = rs.read_error_bytes(RUN)
    assert rs.claim_attempt(RUN, 1, old) and not rs.claim_attempt(RUN, 1, old)
    rs.delete_error(RUN)
    rs.archive_alerts(RUN, 1)
    assert rs.attempt_numbers(RUN) == [1] and rs.read_attempt_error(RUN, 1) == old and not rs.finished(RUN)
    assert store.get(f"{RUN}/{p.attempt_name(1, p.ALERTS)}") == b'{"a": 1}' and rs.markers(RUN) == set()
    assert rs.restore_error_bytes(RUN, old) and not rs.restore_error_bytes(RUN, old)
    rs.unarchive_alerts(RUN, 1)
    rs.drop_attempt(RUN, 1)
    assert rs.attempt_numbers(RUN) == [] and rs.markers(RUN) == {p.ERROR, p.ALERTS}
    # the watcher's store-wide records: the done index and the orphan ledger
    assert rs.mark_done(RUN, b"{}") and not rs.mark_done(RUN, b"{}") and rs.done_index() == {RUN}
    rs.unmark_done(RUN)
    assert rs.done_index() == set()
    assert rs.write_orphan("eu-west-1", "i-0abc", b"1", None) and rs.list_orphans() == [("eu-west-1", "i-0abc")]
    v = rs.read_orphan_versioned("eu-west-1", "i-0abc")
    assert rs.write_orphan("eu-west-1", "i-0abc", b"2", v.etag) and not rs.write_orphan("eu-west-1", "i-0abc", b"3", v.etag)
    rs.delete_orphan("eu-west-1", "i-0abc")
    assert rs.list_orphans() == [] and rs.list_runs() == [RUN]  # `_index/`, `_orphans/` are not runs


def test_log_chunks_read_from_cursor(store):
    rs = RunStore(store)
    for i in range(5):
        rs.put_log_chunk(RUN, i, f"line {i}\n".encode())
    first = rs.read_logs(RUN, max_chunks=2)
    assert first.data == b"line 0\nline 1\n" and first.chunks == 2
    rest = rs.read_logs(RUN, cursor=first.cursor)
    assert rest.data == b"line 2\nline 3\nline 4\n"
    assert rs.read_logs(RUN, cursor=rest.cursor).data == b""
    rs.put_log_chunk(RUN, 5, b"line 5\n")
    assert rs.read_logs(RUN, cursor=rest.cursor).data == b"line 5\n"
    rs.write_latest_log(RUN, "line 4\nline 5\n")
    assert list(rs.list_log_chunks(RUN))[-1].endswith("00000005.log")  # latest file is not a chunk


def test_corrupt_record_is_a_clear_error(store):
    rs = RunStore(store)
    store.put(f"{RUN}/heartbeat.json", b"{not json")
    with pytest.raises(p.RecordError, match="not JSON"):
        rs.read_heartbeat(RUN)
    store.put(f"{RUN}/heartbeat.json", b'{"ts": 1}')
    with pytest.raises(p.RecordError, match="missing field"):
        rs.read_heartbeat(RUN)


def test_list_1000_runs_through_s3_pagination(moto_server, s3_bucket):
    client = moto_server.client("s3")
    ids = [f"run{i:04d}-20250101-000000" for i in range(1000)]
    for rid in ids:
        client.put_object(Bucket=s3_bucket, Key=f"training-runs/{rid}/metadata.json", Body=b"{}")
    rs = RunStore(S3Store(s3_bucket, "training-runs", endpoint_url=moto_server.endpoint))
    assert rs.list_runs() == ids  # > 1 page of CommonPrefixes (1000 per page), every one returned


def test_open_store_picks_backend(tmp_path, moto_server):
    assert isinstance(open_store(str(tmp_path / "a")), LocalStore)
    assert isinstance(open_store((tmp_path / "b").as_uri()), LocalStore)
    s = open_store("s3://bucket/some/prefix", endpoint_url=moto_server.endpoint)
    assert isinstance(s, S3Store) and s.bucket == "bucket" and s.prefix == "some/prefix"
    for bad in ["s3://", "gs://bucket/x", "file://host/path"]:
        with pytest.raises(ConfigError):
            open_store(bad)


def test_local_store_leaves_no_temp_files(tmp_path):
    s = LocalStore(tmp_path / "s")
    s.put("r/a", b"1")
    s.put_if_absent("r/a", b"2")
    s.put_if_match("r/a", b"3", s.get_versioned("r/a").etag)
    names = sorted(x.name for x in (tmp_path / "s" / "r").iterdir())
    assert [n for n in names if n.startswith(".tmp-")] == []
    assert list(s.list("r/")) == ["r/a"]


def test_log_chunks_carry_the_lifecycle_tag_in_s3(moto_server, s3_store):
    RunStore(s3_store).put_log_chunk(RUN, 0, b"hello\n")
    tags = moto_server.client("s3").get_object_tagging(
        Bucket=s3_store.bucket, Key=f"training-runs/{RUN}/logs/00000000.log")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == p.LOG_CHUNK_TAGS


def test_lifecycle_rule_expires_the_tag_the_agent_writes():
    from pathlib import Path

    tf = (Path(__file__).resolve().parents[2] / "infra" / "terraform" / "store.tf").read_text()
    (key, value), = p.LOG_CHUNK_TAGS.items()
    assert f'key   = "{key}"' in tf and f'value = "{value}"' in tf


def _client_error(code: str, status: int, op: str = "ListObjectsV2", headers: dict | None = None):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}}, op)


@pytest.mark.parametrize("make, kind, words", [
    (lambda: _client_error("AccessDenied", 403), "denied", ["may not do that", "IAM policy", "--store"]),
    (lambda: _client_error("ExpiredToken", 400), "credentials", ["expired", "aws sso login"]),
    (lambda: _client_error("InvalidAccessKeyId", 403), "credentials", ["aws configure", "AWS_PROFILE"]),
    (lambda: _client_error("NoSuchBucket", 404), "not_found", ["the bucket does not exist", "store.url"]),
    (lambda: _client_error("InvalidInstanceID.NotFound", 400, "DescribeInstances"), "not_found", ["does not exist"]),
    (lambda: _client_error("PermanentRedirect", 301, headers={"x-amz-bucket-region": "eu-west-1"}), "region",
     ["wrong region", "it lives in eu-west-1", "--store-region"]),
    (lambda: _client_error("SlowDown", 503), "transient", ["throttling", "retry"]),
    (lambda: _client_error("InternalError", 500), "transient", ["retry"]),
])
def test_aws_errors_become_one_line_with_the_setting_to_change(make, kind, words):
    # Real botocore exceptions, as boto3 raises them; a permanent kind refuses the agent's run.
    from agent.protocol import awserrors

    exc = make()
    line = awserrors.explain(exc, region="us-east-1")
    assert awserrors.kind(exc) == kind and "\n" not in line
    assert line.startswith(exc.response["Error"]["Code"] + ": ")
    assert all(w in line for w in words), line
    assert awserrors.permanent(exc) is (kind in ("credentials", "denied", "not_found", "region"))


def test_connection_failures_are_transient_and_unknown_errors_still_one_line():
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    from agent.protocol import awserrors

    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert awserrors.kind(down) == "transient" and not awserrors.permanent(down)
    assert awserrors.kind(NoCredentialsError()) == "credentials" and awserrors.permanent(NoCredentialsError())
    odd = _client_error("SomethingNew", 400)
    assert awserrors.explain(odd) is None and awserrors.one_line(odd) == "SomethingNew: " + str(odd)
    assert not awserrors.is_botocore(ValueError("x")) and awserrors.is_botocore(down)


def test_a_missing_bucket_is_store_refused_and_a_dead_endpoint_is_not(moto_server):
    from agent.protocol.errors import StoreRefused
    from tests.fixtures.net import free_port

    with pytest.raises(StoreRefused, match="NoSuchBucket: the bucket does not exist"):
        list(S3Store("no-such-bucket-13", "runs", endpoint_url=moto_server.endpoint).list("x/"))
    dead = S3Store("b", "runs", endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    with pytest.raises(StoreError) as err:
        list(dead.list("x/"))
    assert not isinstance(err.value, StoreRefused) and "unreachable" in str(err.value)
