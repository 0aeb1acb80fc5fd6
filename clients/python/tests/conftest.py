"""The tests run against a real `lanes serve`.

Either give one with ``LANES_TEST_URL`` (and ``LANES_TEST_TOKEN``, its bearer token, if it
has one), as tests/all/clients.rs does, or let this file start one: ``LANES_BIN`` (the
`lanes` binary) and ``LANES_TEST_PLUGINS`` (a folder holding ``stub.wasm``).

What the tests expect of that daemon (tests/all/clients.rs configures the same):
- a provider ``stub`` served by ``stub.wasm``, limit 4;
- ``[api] max_body_bytes = 65536``;
- a bearer token (``LANES_TEST_TOKEN``); without one, the auth test is skipped and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Tuple

import pytest
import pytest_asyncio

import lanes_client

MAX_BODY_BYTES = 65536


def _start_daemon(binary: str, plugins: str) -> Tuple[subprocess.Popen, str, str, Path]:
    work = Path(tempfile.mkdtemp(prefix="lanes-client-tests-"))
    (work / "plugins").mkdir()
    shutil.copy(Path(plugins) / "stub.wasm", work / "plugins" / "stub.wasm")
    token = "client-tests-token"
    (work / "api.token").write_text(token + "\n")
    config = work / "lanes.toml"
    config.write_text(
        f"""
database_url = "sqlite://{work / 'lanes.db'}"
plugins_dir = "{work / 'plugins'}"
poll_interval_ms = 200
limits_refresh_ms = 100
plugins_rescan_ms = 200

[cache]
dir = "{work / 'cache'}"

[api]
addr = "127.0.0.1:0"
token_file = "{work / 'api.token'}"
max_body_bytes = {MAX_BODY_BYTES}

[providers.stub]
component = "stub.wasm"
limit = 4

[tenants.billing]
daily_usd = 1000
"""
    )
    with open(work / "serve.log", "wb") as log:  # the child keeps its own descriptor
        child = subprocess.Popen(
            [binary, "--config", str(config), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "info"},
        )
    deadline = time.monotonic() + 60
    while True:
        text = (work / "serve.log").read_text(errors="replace")
        found = re.search(r"API listening on (http://[0-9.:]+)", text)
        if found:
            return child, found.group(1), token, work
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise RuntimeError(f"lanes serve did not start:\n{text}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Tuple[str, Optional[str]]]:
    """The API's URL and token."""
    url = os.environ.get("LANES_TEST_URL")
    if url:
        yield url, os.environ.get("LANES_TEST_TOKEN") or None
        return
    binary, plugins = os.environ.get("LANES_BIN"), os.environ.get("LANES_TEST_PLUGINS")
    if not (binary and plugins):
        pytest.fail(
            "no lanes serve to test against: set LANES_TEST_URL (and LANES_TEST_TOKEN), "
            "or LANES_BIN and LANES_TEST_PLUGINS to let the tests start one"
        )
    child, url, token, work = _start_daemon(binary, plugins)
    try:
        yield url, token
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def client(daemon: Tuple[str, Optional[str]]) -> Iterator[lanes_client.Client]:
    url, token = daemon
    with lanes_client.Client(url, token=token or "", timeout=20) as c:
        yield c


@pytest_asyncio.fixture
async def aclient(daemon: Tuple[str, Optional[str]]):
    url, token = daemon
    async with lanes_client.AsyncClient(url, token=token or "", timeout=20) as c:
        yield c


@pytest.fixture
def nobody() -> str:
    """A fresh provider name that no component serves: executions queued on it
    (``allow_unknown``) stay pending, and a filter on it sees only this test's."""
    return f"nobody-{os.urandom(4).hex()}"
