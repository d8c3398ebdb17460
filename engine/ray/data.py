"""`reward-engine score --ray`: a JSONL or Parquet file scored by N engine replicas on
Ray Data, into a directory of part files.

The pipeline:

1. the driver splits the input into shards without parsing it: JSONL by byte ranges of
   ``lines_per_shard`` lines (each shard knows its first line number), Parquet by row
   groups (each knows its first row);
2. ``read_shard`` tasks turn a shard into rows {"line", "raw"} (the JSON text of the
   line; for Parquet, of the row without its null columns): line numbers are the
   local CLI's, blank lines are skipped as it skips them;
3. ``RewardScorer`` actors (engine/ray/scorer.py), ``replicas`` of them, score the rows;
4. ``write_part`` tasks write each scored block to ``part-<first line>.jsonl`` (or
   .parquet) in a hidden staging directory, sorted by line, through a temporary name
   and a rename: a task Ray retries (a replica died, a node left) rewrites the same
   file, so no row is lost or written twice;
5. when every block is written the driver moves the parts into the output directory
   in place of an earlier run's parts, so a rerun replaces the output rather than
   adding to it, and writes ``_SUCCESS`` (the counts).

The output rows are the local command's records (the same "id", "line", "reward" /
"rewards" / "error"); JSONL parts hold exactly its lines, Parquet parts the columns
"line", "id" (JSON text), "error" and "output" (the JSONL record). Concatenating the
parts in name order gives the input order. Every node must see the model, the input
and the output directory at the same paths (a shared filesystem).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from .scorer import OUTPUT_SCHEMA, RewardScorer

FORMATS = ("jsonl", "parquet")
SUCCESS = "_SUCCESS"
PART_PREFIX = "part-"
STAGING_PREFIX = ".staging-"
LINES_PER_SHARD = 1024


class RayScoreError(ValueError):
    """An input or output the Ray scorer cannot use; the message says what to fix."""


def input_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson", ""):
        return "jsonl"
    raise RayScoreError(f"{path}: give a .jsonl or .parquet file")


def plan_shards(path: str | os.PathLike, lines_per_shard: int | None = None,
                target_shards: int = 1) -> list[dict]:
    """The input's shards (module docstring, step 1), in input order: ``lines_per_shard``
    lines or rows each (default: enough shards for ``target_shards``, at most
    LINES_PER_SHARD lines each)."""
    path = str(Path(path).absolute())
    if input_format(path) == "parquet":
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise RayScoreError(f"cannot read {path} as Parquet: {exc}") from None
        groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        size = lines_per_shard or _shard_size(sum(groups), target_shards)
        shards, first = [], 1
        for g, rows in enumerate(groups):
            for offset in range(0, rows, size):
                shards.append({"path": path, "kind": "parquet", "group": g, "start": offset,
                               "stop": min(offset + size, rows), "first_line": first + offset})  # fmt: skip
            first += rows
        return shards
    if lines_per_shard is None:
        with open(path, "rb") as f:
            lines_per_shard = _shard_size(sum(1 for _ in f), target_shards)
    shards, start, line, first, offset = [], 0, 1, 1, 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            if line - first + 1 == lines_per_shard:
                shards.append({"path": path, "kind": "jsonl", "group": -1, "start": start,
                               "stop": offset, "first_line": first})  # fmt: skip
                start, first = offset, line + 1
            line += 1
    if offset > start:
        shards.append({"path": path, "kind": "jsonl", "group": -1, "start": start,
                       "stop": offset, "first_line": first})  # fmt: skip
    return shards


def _shard_size(total: int, target_shards: int) -> int:
    return max(1, min(LINES_PER_SHARD, -(-total // max(1, target_shards))))


def read_shard(shard: dict) -> list[dict]:
    """A shard's rows {"line", "raw"} (module docstring, step 2)."""
    if shard["kind"] == "parquet":
        table = pq.ParquetFile(shard["path"]).read_row_group(int(shard["group"]))
        table = table.slice(shard["start"], shard["stop"] - shard["start"])
        return [{"line": shard["first_line"] + k,
                 "raw": json.dumps({c: v for c, v in row.items() if v is not None},
                                   ensure_ascii=False, default=str), "raw_error": None}
                for k, row in enumerate(table.to_pylist())]  # fmt: skip
    with open(shard["path"], "rb") as f:
        f.seek(shard["start"])
        data = f.read(shard["stop"] - shard["start"])
    rows = []
    for k, raw in enumerate(data.splitlines(keepends=True)):
        line = shard["first_line"] + k
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a byte order mark, dropped as the local command drops it
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:  # the local command's message (engine/jsonl.py)
            rows.append({"line": line, "raw": None,
                         "raw_error": f"the line is not valid UTF-8 (byte {exc.start + 1})"})
            continue
        if text.strip():
            rows.append({"line": line, "raw": text, "raw_error": None})
    return rows


def write_part(batch: pa.Table, staging: str, fmt: str) -> pa.Table:
    """One scored block -> one part file named by its first line (module docstring,
    step 4); returns the block's counts for the driver."""
    table = batch.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
    if table.num_rows == 0:
        return pa.table({"part": pa.array([], pa.string()), "lines": pa.array([], pa.int64()),
                         "errors": pa.array([], pa.list_(pa.int64()))})  # fmt: skip
    table = table.sort_by("line")
    first = table.column("line")[0].as_py()
    name = f"{PART_PREFIX}{first:012d}.{fmt}"
    tmp = Path(staging) / f".{name}.{uuid.uuid4().hex}.tmp"
    if fmt == "parquet":
        pq.write_table(table, tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in table.column("output").to_pylist():
                f.write(record + "\n")
    os.replace(tmp, Path(staging) / name)
    errors = [line for line, err in zip(table.column("line").to_pylist(),
                                         table.column("error").to_pylist(), strict=True)
              if err is not None]  # fmt: skip
    return pa.table({"part": [name], "lines": [table.num_rows], "errors": [errors]})


@dataclass
class RayScoreStats:
    lines: int = 0
    error_lines: list[int] = field(default_factory=list)
    parts: int = 0
    seconds: float = 0.0
    output: str = ""

    def summary(self) -> str:
        n = len(self.error_lines)
        text = (f"scored {self.lines - n} line{_s(self.lines - n)}, {n} error{_s(n)} "
                f"into {self.parts} part file{_s(self.parts)} in {self.output} "
                f"({self.seconds:.1f} s)")  # fmt: skip
        if n:
            listed = ", ".join(str(i) for i in self.error_lines[:10])
            text += f": see line{_s(n)} {listed}{' ...' if n > 10 else ''}"
        return text


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def score_files(
    model: str,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    replicas: int = 1,
    output_format: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    read_cpus: float = 0.25,
    batch_size: int = 64,
    lines_per_shard: int | None = None,
    tensor_parallel_size: int = 1,
    engine_options: dict | None = None,
    scorer: type = RewardScorer,
) -> RayScoreStats:
    """Score ``input_path`` on the Ray cluster ``ray.init`` connected to (module
    docstring). num_cpus / num_gpus: each replica's share; read_cpus: each read and
    write task's (fractions leave room on small machines); scorer: RewardScorer or a
    subclass of it."""
    start = time.perf_counter()
    if not ray.is_initialized():
        raise RayScoreError("call ray.init() first (or use `reward-engine score --ray`)")
    fmt = output_format or input_format(input_path)
    if fmt not in FORMATS:
        raise RayScoreError(f"output format must be jsonl or parquet, got {fmt!r}")
    out = Path(output_dir).absolute()
    if out.exists() and not out.is_dir():
        raise RayScoreError(f"--output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)  # an interrupted earlier run's
    staging = out / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        # a few shards per replica, so every replica has work and a retry redoes little
        shards = plan_shards(input_path, lines_per_shard, target_shards=4 * replicas)
        results = _run(scorer, model, shards, str(staging), fmt, replicas, num_cpus, num_gpus,
                       read_cpus, batch_size, tensor_parallel_size, engine_options or {})  # fmt: skip
        stats = _publish(results, staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stats.seconds = time.perf_counter() - start
    stats.output = str(out)
    (out / SUCCESS).write_text(json.dumps({"lines": stats.lines, "errors": len(stats.error_lines),
                                           "parts": stats.parts, "input": str(input_path),
                                           "model": model}) + "\n")  # fmt: skip
    return stats


def _run(scorer, model, shards, staging, fmt, replicas, num_cpus, num_gpus, read_cpus,
         batch_size, tp, engine_options) -> list[dict]:  # fmt: skip
    if not shards:
        return []
    # blocks keep input order, so a replica's batch (and so a part file) is a contiguous
    # run of lines: the parts in name order are the input order
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items(shards, override_num_blocks=len(shards))
    ds = ds.flat_map(read_shard, num_cpus=read_cpus)
    ds = ds.map_batches(
        scorer,
        fn_constructor_kwargs={"model": model, "tensor_parallel_size": tp, **engine_options},
        concurrency=replicas, batch_size=batch_size, batch_format="pyarrow",
        num_cpus=num_cpus, num_gpus=num_gpus or None,
    )  # fmt: skip
    ds = ds.map_batches(write_part, fn_kwargs={"staging": staging, "fmt": fmt},
                        batch_size=None, batch_format="pyarrow", num_cpus=read_cpus)  # fmt: skip
    return ds.take_all()


def _publish(results: list[dict], staging: Path, out: Path) -> RayScoreStats:
    """Counts per part (a retried block reports its part again: counted once), and the
    parts moved into ``out`` in place of an earlier run's."""
    parts = {r["part"]: r for r in results}
    on_disk = {p.name for p in staging.glob(PART_PREFIX + "*")}
    missing = set(parts) - on_disk
    if missing:
        raise RayScoreError(f"part files reported but not written: {sorted(missing)[:3]}")
    for old in [*out.glob(PART_PREFIX + "*"), out / SUCCESS]:
        old.unlink(missing_ok=True)
    for name in sorted(parts):
        os.replace(staging / name, out / name)
    stats = RayScoreStats(parts=len(parts))
    for name in sorted(parts):
        stats.lines += parts[name]["lines"]
        stats.error_lines += list(parts[name]["errors"])
    stats.error_lines.sort()
    return stats


def read_output(output_dir: str | os.PathLike) -> list[dict]:
    """Every output record of a run, in input order (the JSONL records)."""
    out = Path(output_dir)
    records = []
    for part in sorted(out.glob(PART_PREFIX + "*")):
        if part.suffix == ".parquet":
            records += [json.loads(r) for r in pq.read_table(part).column("output").to_pylist()]
        else:
            records += [json.loads(line) for line in part.read_text().splitlines()]
    return sorted(records, key=lambda r: r["line"])
