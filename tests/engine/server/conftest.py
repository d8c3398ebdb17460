"""Fixtures of the server tests: the shared server processes and the oracle engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_testing import (
    API_KEY,
    MAX_ITEMS,
    MAX_REQUEST_BYTES,
    MODEL_NAME,
    SLOW_ARGS,
    Server,
    launch,
    stop,
    wait_ready,
)

from engine import RewardEngine


@pytest.fixture(scope="session")
def rm_dir(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="session")
def _processes(rm_dir, tmp_path_factory):
    """The shared servers, started together so their startups overlap; a test that
    ends one (the SIGTERM drain) leaves the next user a fresh one."""
    logs = tmp_path_factory.mktemp("server-logs")
    starts = {
        "main": lambda n: launch(rm_dir, logs / f"main{n}.log", "--served-model-name",
                                 MODEL_NAME, "--max-items", str(MAX_ITEMS),
                                 "--max-request-bytes", str(MAX_REQUEST_BYTES),
                                 api_key=API_KEY),
        "slow": lambda n: launch(rm_dir, logs / f"slow{n}.log", *SLOW_ARGS, slow=True),
    }  # fmt: skip
    running = {name: start(0) for name, start in starts.items()}

    def get(name: str) -> Server:
        if running[name].proc.poll() is not None:
            running[name] = starts[name](running[name].proc.pid)
        return wait_ready(running[name])

    yield get
    for server in running.values():
        stop(server)


@pytest.fixture
def server(_processes) -> Server:
    """The main server: API key, --max-items 64, --max-request-bytes 256 KiB."""
    return _processes("main")


@pytest.fixture
def slow_server(_processes) -> Server:
    """One sequence at a time, 64 tokens per step held 50 ms each, 2 may wait, 2 s
    timeout (server_testing.SLOW_ARGS)."""
    return _processes("slow")


@pytest.fixture(scope="session")
def reference(rm_dir):
    """The oracle: RewardEngine.score / score_token_ids on the same checkpoint."""
    return RewardEngine.from_pretrained(rm_dir, dtype="float32", kv_cache_gib=0.25)
