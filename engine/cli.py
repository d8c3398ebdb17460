"""`reward-engine` command line.

    reward-engine score --model CKPT --input in.jsonl --output out.jsonl

Exit codes: 0 every line scored, 1 some lines had errors (each has an "error" in the
output), 2 usage error (nothing scored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .chat import ConversationError
from .jsonl import InputLine, parse_line

USAGE_ERROR = 2

MAIN_EPILOG = """\
examples:
  reward-engine score --model ./my-reward-model --input conversations.jsonl --output rewards.jsonl
  cat conversations.jsonl | reward-engine score --model ./my-reward-model --input - --output -
  reward-engine eval --model ./my-reward-model --data reward-bench.jsonl --output report/

Run 'reward-engine score --help' or 'reward-engine eval --help' for the formats.
"""

SCORE_DESCRIPTION = """\
Score conversations with a reward model. The input is JSON Lines: one object per line,
in one of three forms:

  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
  {"prompt": "..." or [messages], "response": "..."}
  {"prompt": "..." or [messages], "responses": ["...", "...", ...]}

A string prompt is one user message; a response is the final assistant message.
An optional "id" (any JSON value) is copied to the output. Blank lines are skipped.

Each output line (same order as the input) holds the "id" (when given), the input
"line" number, and one of:
  "reward"   a number (a list of numbers for multi-attribute reward heads)
  "rewards"  one reward per response (the "responses" form)
  "error"    why the line was not scored (bad JSON, unknown form or role, too long, ...)

Conversations are formatted with the checkpoint's chat template when its tokenizer
files have one, otherwise with the Llama-3.1 chat format.
"""

SCORE_EPILOG = """\
exit status: 0 all lines scored, 1 some lines had errors, 2 usage error.

examples:
  reward-engine score --model ./my-reward-model --input conversations.jsonl --output rewards.jsonl
  reward-engine score --model ./my-reward-model --input big.jsonl --output out.jsonl \\
      --dtype float32 --max-batch-tokens 8192 --threads 16
  reward-engine score --model ./my-reward-model --input big.jsonl --output out.jsonl \\
      --kv-cache-dtype fp8
  reward-engine score --model ./rm70b-tp2 --input big.jsonl --output out.jsonl \\
      --tensor-parallel-size 2
  echo '{"id": 1, "prompt": "2+2?", "responses": ["4", "5"]}' | \\
      reward-engine score --model ./my-reward-model --input - --output - --no-progress
  reward-engine score --ray --replicas 8 --gpus-per-replica 1 --model /shared/my-rm \\
      --input /shared/big.parquet --output /shared/rewards/
"""


class UsageError(Exception):
    """A problem with the command line or its files: reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reward-engine",
        description="Fast inference for LLM reward models (Llama-3.x architecture).",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="what the engine logs on stderr (default: %(default)s; debug adds each "
        "kernel op's backend choice)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_score_command(commands)
    from .build.cli import add_build_command

    add_build_command(commands, add_dtype_argument, _positive_int)
    from .eval.cli import add_eval_command

    add_eval_command(commands, add_dtype_argument, _positive_int)
    from .server.cli import add_serve_command

    add_serve_command(commands, add_dtype_argument, _positive_int)
    _add_env_command(commands)
    return parser


DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    """--dtype, shared by every command that runs a model."""
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="compute dtype (default: auto = bfloat16 on GPUs and on CPUs with bf16 "
        "dot products (AVX512-BF16, AMX), float32 on other CPUs; `reward-engine env` "
        "shows the choice)",
    )


def setup_logging(level: str) -> None:
    """Engine log lines on stderr; the kernels' per-op backend lines only at debug."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("engine", "kernels"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.propagate = False
        numeric = getattr(logging, level.upper())
        log.setLevel(numeric if name == "engine" or level == "debug" else logging.WARNING)


def _add_score_command(commands) -> None:
    p = commands.add_parser(
        "score",
        help="score conversations from a JSONL file",
        description=SCORE_DESCRIPTION,
        epilog=SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, metavar="DIR", help="engine directory or HF checkpoint directory"
    )
    p.add_argument("--input", required=True, metavar="FILE", help="input JSONL file ('-': stdin)")
    p.add_argument(
        "--output", required=True, metavar="FILE", help="output JSONL file ('-': stdout)"
    )
    add_dtype_argument(p)
    p.add_argument(
        "--kv-cache-dtype",
        choices=("auto", "fp8"),
        help="KV cache storage: auto = the compute dtype; fp8 = E4M3 with per-layer scales "
        "(1 byte per value: twice the cached tokens of bf16 in the same memory; scales 1.0, "
        "with a warning, for a checkpoint that has none) (default: what an engine "
        "directory was built with, else auto)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=_positive_int,
        default=4096,
        metavar="N",
        help="tokens per forward pass (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=_positive_int, metavar="N", help="CPU threads (default: torch's)"
    )
    p.add_argument(
        "--chunk-tokens",
        type=_positive_int,
        default=65536,
        metavar="N",
        help="read and score the input this many tokens at a time; bounds memory "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="engine directories: skip checking the files against their manifest's sha256",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="batch-invariant mode: each reward is the same bits whatever else is in the "
        "file or batch (slower; see the README)",
    )
    add_tensor_parallel_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ray = p.add_argument_group(
        "scale-out on Ray (pip install 'reward-engine[ray]')",
        "--ray scores a JSONL or Parquet --input on a Ray cluster with --replicas engines "
        "(Ray Data); --output is then a directory of part files (concatenated in name order "
        "they are this command's output lines, in input order; Parquet parts have the "
        "columns line, id, error and output). A rerun replaces the directory's parts. The "
        "model, input and output must be at the same paths on every node.",
    )
    ray.add_argument("--ray", action="store_true", help="score on Ray (see above)")
    ray.add_argument("--replicas", type=_positive_int, default=1, metavar="N",
                     help="engine replicas, one Ray actor each (default: %(default)s)")  # fmt: skip
    ray.add_argument("--cpus-per-replica", type=_positive_float, default=1.0, metavar="C",
                     help="CPUs Ray reserves per replica; fractions allowed (default: "
                     "%(default)s; also its torch threads unless --threads)")  # fmt: skip
    ray.add_argument("--gpus-per-replica", type=_positive_float, metavar="G",
                     help="GPUs per replica (default: none; a tensor-parallel replica needs "
                     "one per rank)")  # fmt: skip
    ray.add_argument("--ray-address", metavar="ADDR",
                     help="cluster to join (default: $RAY_ADDRESS, else a local Ray started "
                     "for this run)")  # fmt: skip
    ray.add_argument("--output-format", choices=("jsonl", "parquet"),
                     help="part file format (default: the input's)")  # fmt: skip
    ray.add_argument("--batch-size", type=_positive_int, default=64, metavar="N",
                     help="input lines per engine call in a replica (default: %(default)s)")  # fmt: skip
    p.set_defaults(run=_run_score)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_tensor_parallel_argument(p: argparse.ArgumentParser) -> None:
    """--tensor-parallel-size, shared by the commands that run an engine."""
    p.add_argument(
        "--tensor-parallel-size",
        type=_positive_int,
        default=1,
        metavar="N",
        help="split every layer over N processes (one per GPU; on CPU they share the cores, "
        "--threads is then per process); an engine built with --tp N needs this N "
        "(default: %(default)s)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `reward-engine` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse reported
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    setup_logging(args.log_level)
    try:
        return args.run(args)
    except BrokenPipeError:  # `reward-engine env | head`: the reader left, nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the exit-time flush quiet
        return 0
    except UsageError as exc:
        print(f"reward-engine {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR


# -- env ---------------------------------------------------------------------------------

ENV_DESCRIPTION = """\
Print what this machine has and what the engine chooses on it: the CPU and its ISA
flags, the ISA level of the C++ kernels (found, and chosen), torch and its threads,
the GPUs, the compute dtype that --dtype auto picks and why, the backend each kernel
op dispatches to, and the machine-dependent runtime defaults (KV pool size).
Environment variables that change the choices: REWARD_ENGINE_CPU_ISA (lower the C++
kernels' ISA level), REWARD_ENGINE_KERNEL_BACKEND (force a backend), ONEDNN_MAX_CPU_ISA,
OMP_NUM_THREADS.
"""


def _add_env_command(commands) -> None:
    p = commands.add_parser(
        "env",
        help="show the hardware found and the choices made on it",
        description=ENV_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(run=_run_env)


def _run_env(args: argparse.Namespace) -> int:
    from .environment import collect, format_report

    report = collect()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


# -- score -------------------------------------------------------------------------------


def _run_score(args: argparse.Namespace) -> int:
    _check_model_dir(args.model)
    if args.ray:
        try:
            from .ray.cli import run_ray_score
        except ImportError as exc:
            raise UsageError(str(exc)) from None
        return run_ray_score(args)
    for flag in ("replicas", "cpus_per_replica", "gpus_per_replica", "ray_address",
                 "output_format"):  # fmt: skip
        default = {"replicas": 1, "cpus_per_replica": 1.0}.get(flag)
        if getattr(args, flag) != default:
            raise UsageError(f"--{flag.replace('_', '-')} applies to --ray")
    if args.input != "-" and args.output != "-" and _same_file(args.input, args.output):
        raise UsageError("--output is the --input file: it would be overwritten")
    source, size = _open_input(args.input)
    try:
        sink = _open_output(args.output)
        engine = None
        try:
            engine = _load_engine(args)
            stats = _score_stream(engine, source, sink, args, size)
        finally:
            if engine is not None:
                engine.close()
            if sink is not sys.stdout:
                sink.close()
            else:
                sink.flush()
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    print(stats.summary(), file=sys.stderr)
    if stats.interrupted:
        return 130
    return 1 if stats.error_lines else 0


def _check_model_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise UsageError(f"model directory not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"{path} has no config.json: --model must be a checkpoint directory")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _open_input(path: str) -> tuple[IO[bytes], int | None]:
    """The input as a binary stream, and its size in bytes when known (for the ETA)."""
    if path == "-":
        return sys.stdin.buffer, None
    if os.path.isdir(path):
        raise UsageError(f"cannot read input {path}: it is a directory")
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise UsageError(f"cannot read input {path}: {exc.strerror}") from None
    size = os.fstat(f.fileno()).st_size
    return f, size if size > 0 else None


def _open_output(path: str) -> IO[str]:
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise UsageError(f"cannot write output {path}: {exc.strerror}") from None


def _load_engine(args: argparse.Namespace):
    from . import RewardEngine  # imports torch: only once the command line is known good
    from .errors import EngineError

    try:
        engine = RewardEngine.from_pretrained(
            args.model,
            dtype=args.dtype,
            **({"kv_cache_dtype": args.kv_cache_dtype} if args.kv_cache_dtype else {}),
            max_num_batched_tokens=args.max_batch_tokens,
            num_threads=args.threads,
            verify=not args.no_verify,
            deterministic=args.deterministic,
            tensor_parallel_size=args.tensor_parallel_size,
        )
    except (OSError, ValueError, KeyError, RuntimeError, EngineError) as exc:
        raise UsageError(f"cannot load the model from {args.model}: {exc}") from None
    if engine.chat is None:
        engine.close()
        raise UsageError(
            f"{args.model} has no tokenizer.json: copy the model's tokenizer files into it"
        )
    return engine


@dataclass
class ScoreStats:
    lines: int = 0  # lines scored
    conversations: int = 0
    tokens: int = 0
    error_lines: list[int] = field(default_factory=list)
    interrupted: bool = False
    started: float = field(default_factory=time.perf_counter)

    def summary(self, max_listed: int = 10) -> str:
        n = len(self.error_lines)
        text = (
            f"scored {self.lines} line{_s(self.lines)} "
            f"({self.conversations} conversation{_s(self.conversations)}), "
            f"{n} error{_s(n)}"
        )
        if n:
            listed = ", ".join(str(i) for i in self.error_lines[:max_listed])
            more = " ..." if n > max_listed else ""
            text += f": see line{_s(n)} {listed}{more}"
        if self.interrupted:
            text += " (interrupted: the output holds the lines before)"
        return text


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _score_stream(engine, source: IO[bytes], sink: IO[str], args, size: int | None) -> ScoreStats:
    """Read, tokenize and score the input chunk by chunk, writing each chunk's results
    in input order before reading on: memory stays bounded by the chunk size."""
    from tqdm import tqdm

    stats = ScoreStats()
    bar = tqdm(
        unit="tok",
        unit_scale=True,
        desc="scoring",
        file=sys.stderr,
        disable=args.no_progress,
        dynamic_ncols=True,
    )
    chunk: list[tuple[InputLine, list[list[int]]]] = []
    chunk_tokens = bytes_read = tokens_read = 0
    try:
        for line_no, raw in enumerate(source, start=1):
            bytes_read += len(raw)
            item = parse_line(raw, line_no)
            if item is None:
                continue
            ids = _tokenize(engine, item)
            n = sum(len(s) for s in ids)
            chunk.append((item, ids))
            chunk_tokens += n
            tokens_read += n
            if chunk_tokens >= args.chunk_tokens or len(chunk) >= 4096:
                if size:  # estimate the total from the bytes read so far, for the ETA
                    bar.total = max(bar.n + chunk_tokens, tokens_read * size // bytes_read)
                _flush(engine, chunk, sink, stats, bar)
                chunk, chunk_tokens = [], 0
        if size:
            bar.total = bar.n + chunk_tokens
        _flush(engine, chunk, sink, stats, bar)
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        if bar.total is not None and not stats.interrupted:
            bar.total = bar.n  # lines the engine refused never reported their tokens
        bar.close()
    return stats


def _tokenize(engine, item: InputLine) -> list[list[int]]:
    """Token ids of a line's conversations; on a problem, sets item.error and returns []."""
    if item.error is not None:
        return []
    try:
        ids = engine.chat.encode_batch(item.conversations)
    except ConversationError as exc:
        item.error = str(exc)
        return []
    limit = engine.max_model_len
    for k, seq in enumerate(ids):
        if len(seq) > limit:
            where = f"'responses'[{k}]: " if item.many else ""
            item.error = (
                f"{where}the conversation is {len(seq)} tokens long, more than the model's "
                f"maximum length of {limit} tokens"
            )
            return []
    return ids


def _flush(engine, chunk, sink: IO[str], stats: ScoreStats, bar) -> None:
    """Score one chunk and write its output lines in input order."""
    scored = [(item, ids) for item, ids in chunk if item.error is None]
    results = _score_lines(engine, scored, bar)
    rewards = {item.line: r for (item, _), r in zip(scored, results, strict=True)}
    for item, ids in chunk:
        line_rewards = rewards.get(item.line)
        if item.error is None:
            stats.lines += 1
            stats.conversations += len(ids)
            stats.tokens += sum(len(s) for s in ids)
        else:
            stats.error_lines.append(item.line)
        sink.write(json.dumps(item.output(line_rewards), ensure_ascii=False))
        sink.write("\n")
    sink.flush()


def _score_lines(engine, scored, bar) -> list[list[Any] | None]:
    """Rewards of each line in one engine call. If the engine refuses the call (a
    sequence it cannot take), lines are scored one by one so only the offending lines
    fail (their error is set and their entry is None)."""
    seqs = [s for _, ids in scored for s in ids]
    if not seqs:
        return [[] for _ in scored]
    try:
        flat = engine.score_token_ids(seqs, progress=bar.update)
    except ValueError:
        out = []
        for item, ids in scored:
            try:
                out.append(engine.score_token_ids(ids, progress=bar.update))
            except ValueError as exc:
                item.error = f"the model cannot score it: {exc}"
                out.append(None)
        return out
    out, start = [], 0
    for _, ids in scored:
        out.append(flat[start : start + len(ids)])
        start += len(ids)
    return out


if __name__ == "__main__":
    sys.exit(main())
