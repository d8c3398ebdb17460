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
    """Both shared servers, started together so their startups overlap."""
    logs = tmp_path_factory.mktemp("server-logs")
    main = launch(rm_dir, logs / "main.log", "--served-model-name", MODEL_NAME,
                  "--max-items", str(MAX_ITEMS), "--max-request-bytes",
                  str(MAX_REQUEST_BYTES), api_key=API_KEY)  # fmt: skip
    slow = launch(rm_dir, logs / "slow.log", *SLOW_ARGS, slow=True)
    yield {"main": main, "slow": slow}
    stop(main)
    stop(slow)


@pytest.fixture(scope="session")
def server(_processes) -> Server:
    """The main server: API key, --max-items 64, --max-request-bytes 256 KiB."""
    return wait_ready(_processes["main"])


@pytest.fixture(scope="session")
def slow_server(_processes) -> Server:
    return wait_ready(_processes["slow"])


@pytest.fixture(scope="session")
def reference(rm_dir):
    """The oracle: RewardEngine.score / score_token_ids on the same checkpoint."""
    return RewardEngine.from_pretrained(rm_dir, dtype="float32", kv_cache_gib=0.25)
