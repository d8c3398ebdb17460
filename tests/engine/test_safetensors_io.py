"""safetensors read and written tensor by tensor: interoperable with the safetensors
package in both directions, every dtype the engine stores, and errors for files and
plans that do not match."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.safetensors_io import (
    SafetensorsError,
    SafetensorsReader,
    SafetensorsWriter,
    ShardedSafetensorsWriter,
    sha256_file,
)

TENSORS = {
    "f32": torch.randn(3, 5),
    "bf16": torch.randn(7).to(torch.bfloat16),
    "f16": torch.randn(2, 2, 2).to(torch.float16),
    "fp8": torch.randn(4, 9).to(torch.float8_e4m3fn),
    "i8": torch.randint(-127, 128, (6,), dtype=torch.int8),
    "i32": torch.arange(5, dtype=torch.int32),
    "scalar": torch.tensor(0.25),
    "empty": torch.empty(0, 4),
}


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
        b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)  # fmt: skip


def test_reads_what_the_safetensors_package_writes(tmp_path):
    save_file(TENSORS, tmp_path / "a.safetensors", metadata={"format": "pt"})
    reader = SafetensorsReader(tmp_path / "a.safetensors")
    assert reader.metadata == {"format": "pt"} and set(reader.keys()) == set(TENSORS)
    for name, t in TENSORS.items():
        assert same(reader.read(name), t), name
    assert same(reader.read_rows("f32", [2, 0]), TENSORS["f32"][[2, 0]])


def test_writes_what_the_safetensors_package_reads(tmp_path):
    plan = [(n, t.dtype, tuple(t.shape)) for n, t in TENSORS.items()]
    writer = SafetensorsWriter(tmp_path / "b.safetensors", plan, {"who": "test"})
    for name, t in TENSORS.items():
        writer.write(name, t)
    digest = writer.close()
    assert digest == sha256_file(tmp_path / "b.safetensors")
    assert (tmp_path / "b.safetensors").stat().st_size == writer.nbytes
    with safe_open(tmp_path / "b.safetensors", framework="pt") as f:
        assert f.metadata() == {"who": "test"}
        for name, t in TENSORS.items():
            assert same(f.get_tensor(name), t), name


def test_the_plan_is_enforced(tmp_path):
    writer = SafetensorsWriter(tmp_path / "c.safetensors",
                               [("a", torch.float32, (2,)), ("b", torch.int8, (1,))])  # fmt: skip
    with pytest.raises(SafetensorsError, match="expected tensor 'a'"):
        writer.write("b", torch.zeros(1, dtype=torch.int8))
    with pytest.raises(SafetensorsError, match=r"float32 \[2\]"):
        writer.write("a", torch.zeros(3))
    writer.write("a", torch.zeros(2))
    with pytest.raises(SafetensorsError, match="never written"):
        writer.close()
    with pytest.raises(SafetensorsError, match="planned twice"):
        SafetensorsWriter(tmp_path / "d.safetensors", [("a", torch.float32, ())] * 2)


def test_damaged_files_are_refused(tmp_path):
    save_file({"x": torch.randn(100)}, tmp_path / "x.safetensors")
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-10])
    with pytest.raises(SafetensorsError, match="truncated"):
        SafetensorsReader(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(SafetensorsError, match="unreadable safetensors header"):
        SafetensorsReader(tmp_path / "junk.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(SafetensorsError, match="too short"):
        SafetensorsReader(tmp_path / "tiny.safetensors")


def test_sharded_writer_splits_like_hf_with_an_index(tmp_path):
    plan = [(f"t{i}", torch.float32, (256,)) for i in range(5)]  # 1 KiB each
    writer = ShardedSafetensorsWriter(tmp_path, plan, max_shard_bytes=2048)
    for name, _, shape in plan:
        writer.write(name, torch.full(shape, float(name[1:])))
    digests = writer.close()
    assert writer.names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(digests) == set(writer.names)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["t4"] == "model-00003-of-00003.safetensors"
    assert index["metadata"]["total_size"] == 5 * 1024
    reader = SafetensorsReader(tmp_path / index["weight_map"]["t2"])
    assert reader.read("t2")[0].item() == 2.0
    (tmp_path / "one").mkdir()
    single = ShardedSafetensorsWriter(tmp_path / "one", plan[:1])
    single.write("t0", torch.zeros(256))
    single.close()
    assert single.names == ["model.safetensors"] and not (tmp_path / "one" / "model.safetensors.index.json").exists()
