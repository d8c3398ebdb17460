"""Real server processes for the server tests: start, wait, stop, read metrics.

The fixtures (conftest.py) start `python -m engine.cli serve ...` (or tests/engine/server/
slow_serve.py, the same server with a deliberately slow model step) on a free loopback
port, waits for /v1/health/ready and kills it at teardown. The processes are shared
per session: starting one costs several seconds (torch import, tokenizer, first step).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
SLOW_SERVE = Path(__file__).with_name("slow_serve.py")
# The slow server: one sequence runs at a time, 64 tokens per step, each step held 50 ms
# (slow_serve.py), so a 1,000-token sequence takes about a second; two may wait.
SLOW_ARGS = ("--max-batch-tokens", "64", "--max-num-seqs", "1", "--max-queue", "2",
             "--request-timeout", "2")  # fmt: skip
SLOW_STEP_S = 0.05
SLOW_BATCH_TOKENS = 64
SLOW_TIMEOUT_S = 2.0
API_KEY = "test-key-0123"
MODEL_NAME = "tiny-rm"
MAX_ITEMS = 64
MAX_REQUEST_BYTES = 256 * 1024
RTOL = 1e-4  # fp32: only the batch composition (summation order) differs from the oracle


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    api_key: str | None = None

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, json=None, **kwargs) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.post(self.url + path, json=json, headers=headers, timeout=60, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.get(self.url + path, headers=headers, timeout=60, **kwargs)

    def metrics(self) -> dict[str, float]:
        """/metrics as {'name{labels}': value}."""
        out = {}
        for line in self.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(model_dir, log: Path, *args, api_key=None, slow=False) -> Server:
    """Start a server process (not waiting for it)."""
    port = free_port()
    env = {**os.environ, "REWARD_ENGINE_KV_CACHE_PRETOUCH": "0", "OMP_NUM_THREADS": "1"}
    env.pop("REWARD_ENGINE_API_KEY", None)
    base = [str(SLOW_SERVE)] if slow else ["-m", "engine.cli", "serve"]
    cmd = [sys.executable, *base, str(model_dir), "--port", str(port), "--dtype", "float32",
           "--kv-cache-gib", "0.25", *args]  # fmt: skip
    if api_key:
        cmd += ["--api-key", api_key]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)  # fmt: skip
    return Server(f"http://127.0.0.1:{port}", proc, log, api_key)


def wait_ready(server: Server, timeout: float = 120.0) -> Server:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"the server exited with {server.proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(server.url + "/v1/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(server)
    pytest.fail(f"the server did not become ready in {timeout} s:\n{server.log_text()}")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)


def assert_close(got, expected, rtol=RTOL):
    assert len(got) == len(expected), (got, expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert abs(g - e) <= rtol * max(1.0, abs(e)), f"item {i}: {g} != {e}"
