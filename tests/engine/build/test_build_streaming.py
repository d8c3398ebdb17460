"""A build streams: peak memory does not grow with the checkpoint, and a build killed
at any point leaves nothing that loads as an engine."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import RewardEngine
from engine.build import BuildSettings, build_engine
from engine.build.writer import DirectoryWriter
from engine.engine_dir import MANIFEST, PARTIAL_MANIFEST, EngineDirError, is_engine_dir
from engine.safetensors_io import sha256_file

GIB = 1 << 30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def bench_build():
    spec = importlib.util.spec_from_file_location("bench_build", Path(ROOT) / "bench" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_build(args, **kw):
    code = ("import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, "--log-level", "warning", "build",
                             *map(str, args)], cwd=ROOT, **kw)  # fmt: skip


@pytest.mark.slow
def test_peak_memory_of_a_2_gb_build_is_one_gib_plus_the_largest_tensor(tmp_path):
    bench = bench_build()
    ckpt, largest = bench.synthetic_checkpoint(tmp_path / "ckpt", layers=13, random=False)
    size = (ckpt / "model.safetensors").stat().st_size
    assert size >= 2e9
    proc = bench.run_build([ckpt, "-o", tmp_path / "engine", "--dtype", "bfloat16", "--no-progress"],
                           stderr=subprocess.PIPE)  # fmt: skip
    err = proc.communicate()[1].decode()
    assert proc.returncode == 0, err
    peak = bench.peak_rss(err)  # the build process's own high-water mark
    assert peak < GIB + largest, (
        f"peak RSS {peak / GIB:.2f} GiB for a {size / GIB:.2f} GiB checkpoint; bound "
        f"{(GIB + largest) / GIB:.2f} GiB"
    )
    assert (tmp_path / "engine" / "weights.safetensors").stat().st_size >= size - (1 << 20)


def loadable(path) -> bool:
    try:
        RewardEngine.from_pretrained(path, dtype="float32", num_kv_blocks=16)
    except (EngineDirError, OSError, ValueError, KeyError):
        return False
    return True


def building_dirs(parent):
    return [p for p in parent.iterdir() if p.name.startswith(".engine.building")]


def wait_for_building(proc, parent, timeout=300.0) -> bool:
    """Waits until the build has created its temporary directory (False: it exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if building_dirs(parent):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("the build never started writing")


@pytest.mark.slow
def test_a_build_killed_at_any_point_leaves_no_engine(make_tiny_checkpoint, tmp_path):
    ckpt = make_tiny_checkpoint(num_hidden_layers=4, hidden_size=128, intermediate_size=512)
    out = tmp_path / "engine"
    args = [ckpt, "-o", out, "--quantization", "int8", "--dtype", "float32", "--no-progress"]
    first = run_build(args)
    assert wait_for_building(first, tmp_path)
    start = time.monotonic()
    assert first.wait() == 0
    writing = time.monotonic() - start  # from the temporary directory to the exit
    complete = sha256_file(out / "weights.safetensors")
    shutil.rmtree(out)
    killed = 0
    for fraction in (0.0, 0.5, 0.9):
        proc = run_build(args, stderr=subprocess.DEVNULL)
        if wait_for_building(proc, tmp_path):
            time.sleep(writing * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in tmp_path.iterdir():
            if path != out:
                assert not loadable(path), (fraction, path)
        if out.exists() and (out / MANIFEST).exists():
            # the build had finished (the process was exiting): the engine is whole,
            # verified by loading it, and the same as the first build's
            assert loadable(out) and sha256_file(out / "weights.safetensors") == complete
        else:
            if out.exists():  # killed between the directory rename and the manifest rename
                assert (out / PARTIAL_MANIFEST).exists() and not loadable(out)
            killed += 1
        shutil.rmtree(out, ignore_errors=True)
    assert killed >= 2, "the builds finished before the signals"
    assert run_build(args).wait() == 0  # a new build of the target clears the leftovers
    assert loadable(out) and not building_dirs(tmp_path)


def test_a_stop_between_the_two_renames_leaves_a_refused_directory(tiny_checkpoint, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """The one window the kill test rarely hits: the directory has its name, the manifest
    is still engine.json.partial."""
    real = DirectoryWriter.commit

    def commit_then_stop(self, manifest=None):
        original_rename = type(self.target).rename

        def rename(path, target):
            if path.name == PARTIAL_MANIFEST:
                raise KeyboardInterrupt
            return original_rename(path, target)

        monkeypatch.setattr(type(self.target), "rename", rename)
        return real(self, manifest)

    monkeypatch.setattr(DirectoryWriter, "commit", commit_then_stop)
    out = tmp_path / "engine"
    with pytest.raises(KeyboardInterrupt):
        build_engine(tiny_checkpoint, out, BuildSettings(), progress=False)
    monkeypatch.undo()
    assert is_engine_dir(out) and not (out / MANIFEST).exists()
    with pytest.raises(EngineDirError, match="did not finish.*--force"):
        RewardEngine.from_pretrained(out)
