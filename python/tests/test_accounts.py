"""Accounts on a shared tablet through the Python bindings, against a real server.

Sign-out with edits pending under each policy, the next user on the same file, listeners
during a sign-out (they simply stop: no call once it returns, and each handle reports
itself closed), deleting the database, and an async token provider that says "signed
out" (None) apart from "unreachable" (raises).
"""

import asyncio
import json
import os
import threading
import time

import pytest

from conftest import USERS, device_config, ffi, open_device, run, wait_until

AMINA, BEN = USERS[0][2], USERS[1][2]


def tablet(tmp_path, server, user, token):
    return open_device(tmp_path, server, "tablet", token, user=user)


def sync_first(ms=30_000):
    return ffi.SignOutPolicy.SYNC_FIRST(deadline_ms=ms)


def test_sync_first_refuses_while_edits_wait_then_sends_them_and_leaves_nothing(tmp_path, server):
    a = tablet(tmp_path, server, "amina", AMINA)
    a.set_network_available(False)
    a.put("answers", "q1", json.dumps({"a": 1}))
    with pytest.raises(ffi.OutpostError.UnsyncedEdits) as refused:
        run(a.sign_out(sync_first(2_000)))
    assert (refused.value.pending, refused.value.failed, refused.value.conflicts) == (1, 0, 0)
    assert a.get("answers", "q1") is not None, "nothing changed"
    a.set_network_available(True)
    wait_until(a.is_network_available, what="network trusted")
    run(a.sign_out(sync_first()))
    with pytest.raises(ffi.OutpostError.Closed):
        a.get("answers", "q1")
    b = tablet(tmp_path, server, "ben", BEN)
    assert b.count("answers", []) == 0, "none of her records on the tablet"
    report = run(b.sync_now(30_000))
    assert report.outcome == ffi.SyncOutcome.COMPLETED
    assert b.count("answers", []) == 1, "what the server lets his team read"
    b.close()


def test_kept_edits_are_hers_alone_and_go_out_when_she_is_back(tmp_path, server):
    path = device_config(tmp_path, server, "tablet").path
    a = tablet(tmp_path, server, "amina", AMINA)
    a.set_network_available(False)
    a.put("answers", "mine", json.dumps({"note": "typed offline"}))
    run(a.sign_out(ffi.SignOutPolicy.KEEP_UNSYNCED()))

    b = tablet(tmp_path, server, "ben", BEN)
    assert b.get("answers", "mine") is None
    assert b.query("answers", ffi.Query()) == []
    b.put("answers", "his", "{}")
    with pytest.raises(ffi.OutpostError.WrongUser) as refused:
        tablet(tmp_path, server, "amina", AMINA)
    assert refused.value.holder == "ben"
    with pytest.raises(ffi.OutpostError.StillOpen):
        ffi.delete_database(path)
    run(b.sign_out(sync_first()))

    back = tablet(tmp_path, server, "amina", AMINA)
    mine = back.get("answers", "mine")
    assert mine.sync_state == ffi.SyncState.PENDING
    assert json.loads(mine.data_json) == {"note": "typed offline"}
    assert back.get("answers", "his") is None, "his synced record left with him"
    report = run(back.sync_now(30_000))
    assert report.outcome == ffi.SyncOutcome.COMPLETED and report.applied == 1
    back.close()
    ffi.delete_database(path)
    assert not os.path.exists(path)


class Calls:
    """Counts listener calls; one that starts after `done` is late."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = self.running = self.late = 0
        self.done = False

    def call(self):
        with self.lock:
            self.late += self.done
            self.calls += 1
            self.running += 1
        time.sleep(0.01)
        with self.lock:
            self.running -= 1


class Listener(ffi.QueryListener, ffi.RecordListener, ffi.ChangeListener, ffi.StatusListener):
    """Every kind of listener, each call counted."""

    def __init__(self, calls):
        self.calls = calls

    def on_result(self, records):
        self.calls.call()

    def on_record(self, record):
        self.calls.call()

    def on_change(self, event):
        self.calls.call()

    def on_status(self, status):
        self.calls.call()


def test_listeners_stop_at_sign_out_and_none_is_called_after(tmp_path, server):
    a = tablet(tmp_path, server, "amina", AMINA)
    calls = Calls()
    listener = Listener(calls)
    handles = [a.observe("answers", ffi.Query(), listener),
               a.observe_one("answers", "w3", listener),
               a.subscribe(listener),
               a.subscribe_status(listener)]
    saved, ended = [], []

    def write():
        i = 0
        while True:
            try:
                a.put("answers", f"w{i}", "{}")
            except ffi.OutpostError as e:
                ended.append(e)
                return
            saved.append(f"w{i}")
            i += 1
    writer = threading.Thread(target=write)
    writer.start()
    wait_until(lambda: calls.calls >= 10, what="listeners called")
    run(a.sign_out(ffi.SignOutPolicy.KEEP_UNSYNCED()))
    calls.done = True
    assert calls.running == 0, "a listener outlived sign-out"
    writer.join(10)
    assert isinstance(ended[0], ffi.OutpostError.Closed)
    for h in handles:
        assert h.is_closed()
        run(h.closed(), timeout=5)
    time.sleep(0.3)
    assert calls.late == 0, "a listener was called after sign-out"
    # Every write that returned was kept for her; none after the end landed.
    back = tablet(tmp_path, server, "amina", AMINA)
    kept = sorted(r.id for r in back.query("answers", ffi.Query()))
    assert kept == sorted(saved)
    back.close()


class Session(ffi.TokenProvider):
    """A session that may end: a token while signed in, None after."""

    def __init__(self):
        self.signed_in = False

    async def token(self, refresh):
        await asyncio.sleep(0.01)  # the call to the identity provider
        return AMINA if self.signed_in else None


class Unreachable(ffi.TokenProvider):
    async def token(self, refresh):
        raise ConnectionError("identity provider unreachable")


def test_an_async_provider_says_signed_out_apart_from_unreachable(devices):
    session = Session()
    a = devices("a", provider=session)
    a.put("answers", "q", "{}")
    report = run(a.sync_now(30_000))
    assert report.outcome == ffi.SyncOutcome.SIGNED_OUT and not report.should_retry
    assert a.status().activity == ffi.SyncActivity.SIGNED_OUT
    assert a.status().next_retry_at_ms is None
    session.signed_in = True
    assert run(a.sync_now(30_000)).outcome == ffi.SyncOutcome.COMPLETED

    b = devices("b", provider=Unreachable())
    b.put("answers", "r", "{}")
    report = run(b.sync_now(30_000))
    assert report.outcome == ffi.SyncOutcome.BACKING_OFF and report.should_retry
    assert "identity provider unreachable" in report.errors[0]
    assert b.status().activity == ffi.SyncActivity.BACKING_OFF
    assert b.status().pending == 1
