"""The device API through the generated Python bindings, against a real server.

The same path the Kotlin and Swift layers take: records as JSON text, typed errors,
foreign listeners called from Rust threads, and `sync_now` awaited under asyncio.
"""

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import USERS, ffi, run, wait_until

AMINA, BEN, CHIOMA = USERS[0][2], USERS[1][2], USERS[2][2]


def sync(device, deadline_ms=30_000):
    return run(device.sync_now(deadline_ms))


class SlowToken(ffi.TokenProvider):
    """Answers once `release` is set, without holding up the event loop."""

    def __init__(self, release):
        self.release = release

    async def token(self, refresh):
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return AMINA


def data(record):
    return json.loads(record.data_json)


class Events(ffi.ChangeListener):
    def __init__(self, fail_first=False):
        self.events = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def on_change(self, event):
        with self.lock:
            self.events.append(event)
            n = len(self.events)
        if self.fail_first and n == 1:
            raise RuntimeError("a listener bug")

    def count(self):
        with self.lock:
            return len(self.events)


def test_offline_writes_then_sync_reach_another_device(devices):
    a, b = devices("a", AMINA), devices("b", BEN)
    a.set_network_available(False)
    for i in range(5):
        a.put("answers", f"q{i}", json.dumps({"q": i, "a": "yes"}))
    report = sync(a)
    assert report.outcome == ffi.SyncOutcome.OFFLINE and report.should_retry
    assert a.status().activity == ffi.SyncActivity.OFFLINE
    assert a.status().pending == 5
    a.set_network_available(True)
    wait_until(a.is_network_available, what="network trusted after the health probe")
    report = sync(a)
    assert report.outcome == ffi.SyncOutcome.COMPLETED, report
    assert report.applied == 5 and not report.should_retry
    assert a.status().pending == 0
    assert a.get("answers", "q3").sync_state == ffi.SyncState.SYNCED
    assert sync(b).outcome == ffi.SyncOutcome.COMPLETED
    assert b.count("answers", []) == 5
    got = b.query("answers", ffi.Query(filters=[ffi.Filter(field="q", value_json="3")]))
    assert [data(r)["a"] for r in got] == ["yes"]


def test_listener_hears_local_and_remote_changes(devices):
    a, b = devices("a", AMINA), devices("b", BEN)
    events = Events()
    handle = b.subscribe(events)
    b.put("answers", "local", "{}")
    wait_until(lambda: events.count() >= 1, what="local change event")
    assert events.events[0].origin == ffi.ChangeOrigin.LOCAL
    a.put("answers", "remote", json.dumps({"from": "a"}))
    assert sync(a).outcome == ffi.SyncOutcome.COMPLETED
    assert sync(b).outcome == ffi.SyncOutcome.COMPLETED
    wait_until(lambda: any(r.id == "remote" for e in events.events for r in e.records),
               what="remote change event")
    handle.close()
    before = events.count()
    b.put("answers", "after-close", "{}")
    time.sleep(0.2)
    assert events.count() == before


def test_a_throwing_listener_is_skipped_not_fatal(devices):
    a = devices("a", AMINA)
    events = Events(fail_first=True)
    handle = a.subscribe(events)  # noqa: F841 (releasing the handle unsubscribes)
    a.put("answers", "one", "{}")
    wait_until(lambda: events.count() >= 1, what="first event")
    a.put("answers", "two", "{}")
    wait_until(lambda: events.count() >= 2, what="event after the listener threw")
    assert a.get("answers", "two") is not None


def test_manual_conflict_resolved_from_python(devices):
    a, b = devices("a", AMINA), devices("b", BEN)
    seen = []

    class OnConflict(ffi.ConflictListener):
        def on_conflict(self, conflict):
            seen.append(conflict)
    b.set_conflict_listener(OnConflict())
    a.put("reviews", "r1", json.dumps({"score": 1, "note": "base"}))
    assert sync(a).outcome == ffi.SyncOutcome.COMPLETED
    assert sync(b).outcome == ffi.SyncOutcome.COMPLETED
    a.patch("reviews", "r1", json.dumps({"score": 2}))
    b.patch("reviews", "r1", json.dumps({"score": 3}))
    assert sync(a).outcome == ffi.SyncOutcome.COMPLETED
    report = sync(b)
    assert report.conflicts == 1, report
    wait_until(lambda: seen, what="conflict listener")
    [open_conflict] = b.conflicts()
    assert open_conflict.id == seen[0].id
    assert json.loads(open_conflict.local_json)["score"] == 3
    assert json.loads(open_conflict.remote_json)["score"] == 2
    assert b.get("reviews", "r1").sync_state == ffi.SyncState.CONFLICTED
    assert b.status().conflicts == 1
    b.resolve(open_conflict.id, ffi.Resolution.MERGED(data_json=json.dumps({"score": 5, "note": "agreed"})))
    assert b.conflicts() == []
    assert sync(b).outcome == ffi.SyncOutcome.COMPLETED
    assert sync(a).outcome == ffi.SyncOutcome.COMPLETED
    assert data(a.get("reviews", "r1")) == {"score": 5, "note": "agreed"}


def test_a_rejected_edit_is_kept_until_retried_or_discarded(devices):
    a, c = devices("a", AMINA), devices("c", CHIOMA)
    a.put("answers", "north-1", json.dumps({"team": "north"}))
    assert sync(a).outcome == ffi.SyncOutcome.COMPLETED
    # The server refuses this for good: a counter past its cap of CRDT entries.
    too_big = {"n": {"$crdt": "gcounter", "p": {f"r{i}": 1 for i in range(10_001)}}}
    c.put("answers", "too-big", json.dumps(too_big))
    c.put("answers", "south-1", json.dumps({"team": "south"}))
    report = sync(c)
    assert (report.applied, report.rejected) == (1, 1), report
    [edit] = c.failed_edits()
    assert (edit.collection, edit.record_id, edit.kind) == ("answers", "too-big", "put")
    assert (edit.error_code, edit.attempts) == ("invalid_request", 1)
    assert json.loads(edit.data_json) == too_big
    rec = c.get("answers", "too-big")
    assert rec.sync_state == ffi.SyncState.FAILED and data(rec) == too_big
    assert c.status().failed == 1
    assert c.retry_failed() == 1
    assert sync(c).rejected == 1
    [edit] = c.failed_edits()
    assert edit.attempts == 2
    # Only a failed entry can be discarded; anything else is NotFound and changes nothing.
    with pytest.raises(ffi.OutpostError.NotFound):
        c.discard_failed(edit.entry_id + 1000)
    assert len(c.failed_edits()) == 1
    c.discard_failed(edit.entry_id)
    assert c.failed_edits() == []
    assert c.get("answers", "too-big") is None, "never synced, so it goes"
    assert c.get("answers", "south-1").sync_state == ffi.SyncState.SYNCED
    assert c.status().failed == 0
    assert sync(a).pulled == 0
    assert data(a.get("answers", "north-1")) == {"team": "north"}


def test_invalid_input_raises_typed_errors(devices):
    a = devices("a", AMINA)
    with pytest.raises(ffi.OutpostError.InvalidData):
        a.put("answers", "x", "{not json")
    with pytest.raises(ffi.OutpostError.InvalidData):
        a.put("answers", "x", "[1, 2]")
    with pytest.raises(ffi.OutpostError.InvalidCollection) as e:
        a.put("Answers", None, "{}")
    assert e.value.name == "Answers"
    with pytest.raises(ffi.OutpostError.UnknownCollection):
        a.get("nope", "x")
    with pytest.raises(ffi.OutpostError.InvalidRecordId):
        a.put("answers", "", "{}")
    with pytest.raises(ffi.OutpostError.NotFound):
        a.patch("answers", "missing", "{}")
    with pytest.raises(ffi.OutpostError.InvalidData):
        a.batch([ffi.WriteOp.PUT(collection="answers", id="ok", data_json="{}"),
                 ffi.WriteOp.PATCH(collection="answers", id="ok", fields_json="nope")])
    assert a.get("answers", "ok") is None
    assert a.count("answers", []) == 0


def test_batch_and_crdt_operations(devices):
    a = devices("a", AMINA)
    out = a.batch([
        ffi.WriteOp.PUT(collection="patients", id="p1", data_json='{"name": "Amina"}'),
        ffi.WriteOp.INCREMENT(collection="patients", id="p1", field="visits", by=2),
        ffi.WriteOp.SET_ADD(collection="patients", id="p1", field="tags", element="fever"),
        ffi.WriteOp.SET_REGISTER(collection="patients", id="p1", field="owner", value_json='"ben"'),
    ])
    assert len(out) == 4
    rec = a.set_remove("patients", "p1", "tags", "fever")
    assert data(rec)["tags"]["$crdt"] == "orset"
    assert data(a.increment("patients", "p1", "visits", -1))["visits"]["$crdt"] == "pncounter"
    assert sync(a).outcome == ffi.SyncOutcome.COMPLETED


def test_attachments_reach_another_device_byte_for_byte(devices, tmp_path):
    a, b = devices("a", AMINA), devices("b", BEN)
    photo = bytes((i * 7) % 251 for i in range(200_000))
    src = tmp_path / "photo.jpg"
    src.write_bytes(photo)
    ref = a.attach_file(str(src), "image/jpeg", "photo.jpg")
    assert ref.size == 200_000 and json.loads(ref.json)["$attachment"] == ref.sha256
    a.put("answers", "a1", json.dumps({"photo": json.loads(ref.json)}))
    here = a.attachment(ref.sha256)
    assert isinstance(here, ffi.Attachment.READY) and open(here.path, "rb").read() == photo
    assert a.status().attachment_uploads == 1
    report = sync(a)
    assert report.files_uploaded == 1 and a.status().attachment_uploads == 0, report
    sync(b)
    assert isinstance(b.attachment(ref.sha256), ffi.Attachment.PENDING)
    assert b.status().attachment_downloads == 1
    report = sync(b)
    assert report.files_downloaded == 1, report
    got = b.attachment(ref.sha256)
    assert isinstance(got, ffi.Attachment.READY) and open(got.path, "rb").read() == photo
    with pytest.raises(ffi.OutpostError.InvalidData):
        a.attach_bytes(b"x", "not a type", None)
    with pytest.raises(ffi.OutpostError.File):
        a.attach_file(str(tmp_path / "missing"), "image/jpeg", None)


def test_concurrent_writes_from_threads(devices):
    a = devices("a", AMINA)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: a.put("answers", f"t{i}", json.dumps({"i": i})), range(200)))
    assert a.count("answers", []) == 200
    assert sync(a).applied == 200


def test_use_after_close_raises_closed(devices):
    a = devices("a", AMINA)
    a.put("answers", "kept", "{}")
    a.close()
    assert a.is_closed()
    with pytest.raises(ffi.OutpostError.Closed):
        a.get("answers", "kept")
    with pytest.raises(ffi.OutpostError.Closed):
        a.put("answers", "x", "{}")
    with pytest.raises(ffi.OutpostError.Closed):
        sync(a)
    a.close()


def test_sync_now_cancelled_under_asyncio(devices):
    release = threading.Event()
    a = devices("a", provider=SlowToken(release))
    a.put("answers", "c1", "{}")

    async def cancel_midway():
        task = asyncio.ensure_future(a.sync_now(None))
        await asyncio.sleep(0.2)
        assert a.status().activity == ffi.SyncActivity.SYNCING
        a.cancel_sync()
        return await task

    report = run(cancel_midway())
    release.set()
    assert report.outcome == ffi.SyncOutcome.CANCELLED
    assert a.status().pending == 1
    report = sync(a)
    assert report.outcome == ffi.SyncOutcome.COMPLETED and report.applied == 1


def test_deadline_stops_a_sync(devices):
    release = threading.Event()
    a = devices("a", provider=SlowToken(release))
    a.put("answers", "d1", "{}")
    report = sync(a, deadline_ms=100)
    release.set()
    assert report.outcome == ffi.SyncOutcome.DEADLINE_EXCEEDED and report.should_retry
    assert a.status().pending == 1


class Statuses(ffi.StatusListener):
    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    def on_status(self, status):
        with self.lock:
            self.seen.append(status)


def test_first_sync_progress_is_monotonic_and_reaches_the_total(devices):
    b = devices("b", BEN)
    b.batch([ffi.WriteOp.PUT(collection="patients", id=f"p{i}",
                             data_json=json.dumps({"name": f"P{i}", "village": "Kole", "age": i}))
             for i in range(600)])
    assert sync(b).outcome == ffi.SyncOutcome.COMPLETED
    a = devices("a", AMINA)
    assert not a.status().has_synced
    statuses = Statuses()
    handle = a.subscribe_status(statuses)
    report = sync(a, deadline_ms=60_000)
    assert report.outcome == ffi.SyncOutcome.COMPLETED
    assert report.bytes_received > 0 and report.bytes_sent > 0
    wait_until(lambda: statuses.seen and statuses.seen[-1].has_synced, what="the last status")
    handle.close()
    with statuses.lock:
        seen = list(statuses.seen)
    done = [s.progress.download.changes_done for s in seen]
    assert done == sorted(done), done
    last = seen[-1].progress.download
    assert (last.changes_done, last.changes_total) == (600, 600)
    assert report.progress.download.changes_done == 600
    patients = [c for c in report.progress.collections if c.collection == "patients"]
    assert patients[0].download.changes_total == 600
    assert not any(s.has_synced for s in seen if 0 < s.progress.download.changes_done < 600)
