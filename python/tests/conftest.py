"""Test support: the generated bindings and a real outpost-server on a loopback port.

The server is started the way testkit/src/server.rs starts it: a temporary TOML config
with three users, `listen = "127.0.0.1:0"`, and the address read from its first
stdout line.

The token provider is an async callback. Rust calls it from its own threads, where no
asyncio loop runs, so UniFFI schedules it on the loop given to `uniffi_set_event_loop`;
the bindings' own coroutines (`sync_now`, `sign_out`) are then awaited on that loop too,
through `run`.
"""

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = Path(os.environ.get("OUTPOST_PY_BINDINGS", ROOT / "python" / "generated"))
sys.path.insert(0, str(GENERATED))

import outpost_ffi as ffi  # noqa: E402

LOOP = asyncio.new_event_loop()
threading.Thread(target=LOOP.run_forever, name="uniffi-loop", daemon=True).start()
ffi.uniffi_set_event_loop(LOOP)


def run(coro, timeout=60):
    """Awaits one of the bindings' coroutines on the loop UniFFI uses."""
    return asyncio.run_coroutine_threadsafe(coro, LOOP).result(timeout)


USERS = [("amina", "north", "token-amina-0123456789abcdef0123456789"),
         ("ben", "north", "token-ben-0123456789abcdef0123456789"),
         ("chioma", "south", "token-chioma-0123456789abcdef0123456789")]

COLLECTIONS = [ffi.CollectionSpec(name="answers", strategy=ffi.ConflictStrategy.LAST_WRITE_WINS),
               ffi.CollectionSpec(name="patients", strategy=ffi.ConflictStrategy.FIELD_MERGE,
                                  indexes=[["village", "name"], ["age"]], search=["name"]),
               ffi.CollectionSpec(name="reviews", strategy=ffi.ConflictStrategy.MANUAL)]


def server_binary() -> Path:
    override = os.environ.get("OUTPOST_SERVER_BIN")
    return Path(override) if override else ROOT / "target" / "debug" / "outpost-server"


class Server:
    def __init__(self, tmp: Path):
        config = tmp / "server.toml"
        lines = ['listen = "127.0.0.1:0"', f'database = "{tmp / "server.db"}"',
                 'default_access = "team"', "tombstone_retention_days = 30"]
        for name, team, token in USERS:
            lines += ["", "[[users]]", f'name = "{name}"', f'team = "{team}"', f'token = "{token}"']
        config.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([str(server_binary()), "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        found = []
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                prefix = "outpost-server listening on http://"
                if line.startswith(prefix) and not found:
                    found.append(line[len(prefix):].strip())
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            self.proc.kill()
            raise RuntimeError("outpost-server did not start")
        self.url = f"http://{found[0]}/"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


class StaticToken(ffi.TokenProvider):
    def __init__(self, token):
        self.value = token

    async def token(self, refresh):
        return self.value


def device_config(tmp_path, server, name, user=None):
    return ffi.OutpostConfig(
        path=str(tmp_path / f"{name}.db"),
        server_url=server.url,
        collections=COLLECTIONS,
        durability=ffi.Durability.NORMAL,
        backoff_initial_ms=100,
        backoff_max_ms=500,
        network_debounce_ms=20,
        user_id=user,
    )


def open_device(tmp_path, server, name, token, provider=None, user=None):
    config = device_config(tmp_path, server, name, user)
    return ffi.Outpost.open(config, provider or StaticToken(token))


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def devices(tmp_path, server):
    opened = []

    def make(name, token=USERS[0][2], provider=None, user=None):
        d = open_device(tmp_path, server, name, token, provider, user)
        opened.append(d)
        return d
    yield make
    for d in opened:
        d.close()
