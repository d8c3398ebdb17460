"""`reward-engine eval`: the subcommand's parser and its runner.

    reward-engine eval --model CKPT --data rewardbench.jsonl --output report/

run_eval() is the whole pipeline on an already loaded engine (tests pass a stub
with known rewards); the subcommand loads the engine and calls it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from . import metrics as M
from .formats import (
    FORMATS,
    DataError,
    EvalRow,
    count_rows,
    describe_fields,
    detect_format,
    parse_row,
    read_records,
)
from .plots import write_plots
from .report import write_report
from .rewardbench_data import V2_TIES
from .scoring import RewardShapeError, score_rows

DESCRIPTION = """\
Evaluate a reward model on preference data and write a report (report.md, report.json,
scores.jsonl and PNG plots) into --output.

Formats (JSON Lines or Parquet, one row per line; told from the fields unless --format
is given):
  rewardbench   RewardBench v1: prompt, chosen, rejected (strings), subset. A row is
                correct when reward(chosen) > reward(rejected) (a tie is wrong); the four
                sections (Chat, Chat Hard, Safety, Reasoning) weight their subsets by
                RewardBench's example counts; overall = mean of the sections.
  rewardbench2  RewardBench 2: prompt, chosen and rejected (lists of strings), subset,
                num_correct. Best-of-N with fractional credit on ties; the Ties subset's
                own score (ids 'ref:N' / 'tied:N'); overall = mean of the subsets.
  pairs         any {prompt, chosen, rejected} file (strings or message lists; HH-RLHF
                transcripts without a prompt): accuracy and mean margin.

The responses of a row are scored together, so their shared prompt is computed once (the
report gives the prefix-cache hit rate). A bad row is reported with its line number and
never stops the others.
"""

EPILOG = """\
exit status: 0 every row scored, 1 some rows had errors (see the report), 2 usage error.

examples:
  reward-engine eval --model ./my-reward-model --data reward-bench.parquet --output rb1/
  reward-engine eval --model ./my-reward-model --data rb2.jsonl --format rewardbench2
  reward-engine eval --model ./my-reward-model --data hh.jsonl --deterministic --threads 16
"""

CHANCE = {"rewardbench": 0.5, "pairs": 0.5, "rewardbench2": 0.25}


class EvalUsageError(Exception):
    """A problem with the command line or the data file: one line, exit status 2."""


def add_eval_command(commands, add_dtype_argument, positive_int) -> None:
    """The `eval` subcommand; the shared --dtype option and int parser come from the CLI."""
    p = commands.add_parser(
        "eval",
        help="evaluate on RewardBench (v1, v2) or preference pairs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint or engine directory")
    p.add_argument("--data", required=True, metavar="FILE", help=".jsonl or .parquet file")
    p.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                   help="data format (default: told from the fields)")  # fmt: skip
    p.add_argument("--output", metavar="DIR", help="report directory (default: eval-<data name>)")
    add_dtype_argument(p)
    p.add_argument("--max-batch-tokens", type=positive_int, default=4096, metavar="N",
                   help="tokens per forward pass (default: %(default)s)")  # fmt: skip
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads")
    p.add_argument("--deterministic", action="store_true",
                   help="batch-invariant scoring: rewards independent of the batch (slower)")  # fmt: skip
    p.add_argument("--reward-index", type=int, metavar="I",
                   help="which reward to evaluate for multi-attribute heads")  # fmt: skip
    p.add_argument("--no-verify", action="store_true",
                   help="engine directories: skip checking the files against their manifest")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=_run_eval_command)


def _run_eval_command(args: argparse.Namespace) -> int:
    data = Path(args.data)
    output = Path(args.output) if args.output else Path(f"eval-{data.stem}")
    try:
        fmt = resolve_format(data, None if args.format == "auto" else args.format)
        if not os.path.isdir(args.model):
            raise EvalUsageError(f"model directory not found: {args.model}")
        engine = _load_engine(args)
        status, _ = run_eval(
            engine, data, fmt, output, model=args.model, reward_index=args.reward_index,
            plots=not args.no_plots, progress=not args.no_progress,
            options={"dtype": str(engine.model.dtype).removeprefix("torch."),
                     "deterministic": args.deterministic,
                     "max_batch_tokens": args.max_batch_tokens},
        )  # fmt: skip
        return status
    except (EvalUsageError, DataError, RewardShapeError) as exc:
        print(f"reward-engine eval: error: {exc}", file=sys.stderr)
        return 2


def _load_engine(args: argparse.Namespace):
    from engine import RewardEngine  # imports torch: only once the arguments are good

    try:
        engine = RewardEngine.from_pretrained(
            args.model, dtype=args.dtype, max_num_batched_tokens=args.max_batch_tokens,
            num_threads=args.threads, deterministic=args.deterministic,
            verify=not args.no_verify,
        )  # fmt: skip
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise EvalUsageError(f"cannot load the model from {args.model}: {exc}") from None
    if engine.chat is None:
        raise EvalUsageError(
            f"{args.model} has no tokenizer.json: copy the model's tokenizer files into it"
        )
    return engine


def resolve_format(data: Path, fmt: str | None) -> str:
    """`fmt`, or the format the first readable row's fields say."""
    for line, record, error in read_records(data):
        if error is not None:
            continue
        if fmt is not None:
            return fmt
        found = detect_format(record)
        if found is None:
            raise EvalUsageError(
                f"{data}: cannot tell the format from the first row (line {line}, "
                f"{describe_fields(record)}): expected chosen/rejected fields; pass --format"
            )
        return found
    raise DataError(f"{data} has no readable rows")


def run_eval(
    engine,
    data: Path,
    fmt: str,
    output: Path,
    *,
    model: str = "",
    reward_index: int | None = None,
    plots: bool = True,
    progress: bool = False,
    options: dict | None = None,
) -> tuple[int, dict]:
    """Score every row of `data` as `fmt`, write the report into `output`; returns (exit
    status, report)."""
    from tqdm import tqdm

    total_rows = count_rows(data)
    bar = tqdm(unit="tok", unit_scale=True, desc="evaluating", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    started = time.perf_counter()
    rows: list[EvalRow] = []
    interrupted = False
    try:
        done_tokens = 0
        for row in score_rows(engine, _rows(data, fmt), reward_index, progress=bar.update):
            row.chosen = row.rejected = []  # the text is no longer needed: bound memory
            rows.append(row)
            done_tokens += row.tokens
            if total_rows:  # estimate the total from the tokens per row so far
                bar.total = max(bar.n, int(done_tokens * total_rows / len(rows)))
                bar.refresh()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    options = {**(options or {}), "reward_index": reward_index}
    report = build_report(engine, rows, fmt, data, model, seconds, options, interrupted)
    report["plots"], report["plots_skipped"] = [], "--no-plots"
    output.mkdir(parents=True, exist_ok=True)
    if plots:
        report["plots"], report["plots_skipped"] = write_plots(report, output)
    write_report(report, rows, output)
    print(_summary(report, output), file=sys.stderr)
    if interrupted:
        return 130, report
    return (1 if report["rows"]["errors"] else 0), report


def _rows(data: Path, fmt: str):
    for line, record, error in read_records(data):
        row = EvalRow(line, error=error) if error is not None else parse_row(record, line, fmt)
        if fmt == "rewardbench2" and str(row.subset).lower() == V2_TIES:
            M.check_ties_ids([row])
        yield row


def build_report(engine, rows, fmt, data, model, seconds, options, interrupted) -> dict:
    scored = [r for r in rows if r.error is None]
    if fmt == "rewardbench":
        figures = M.rewardbench_metrics(scored)
    elif fmt == "rewardbench2":
        figures = M.rewardbench2_metrics(scored)
    else:
        figures = M.pairs_metrics(scored)
    stats = engine.metrics()
    tokens = sum(r.tokens for r in scored)
    return {
        "format": fmt,
        "data": str(data),
        "model": model,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "options": options,
        "rows": {"total": len(rows), "scored": len(scored), "errors": len(rows) - len(scored)},
        "interrupted": interrupted,
        "chance": CHANCE[fmt],
        "metrics": figures,
        "margins": M.margin_summary([M.margin(r) for r in scored]),
        "engine": {
            "conversations": sum(len(r.chosen_rewards) + len(r.rejected_rewards) for r in scored),
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else None,
            **{k: stats[k] for k in _ENGINE_STATS if k in stats},
        },
        "errors": [{"line": r.line, "id": r.id, "error": r.error} for r in rows if r.error],
    }


_ENGINE_STATS = ("prefix_cache_hit_rate", "prefix_cache_hit_tokens", "tokens_requested",
                 "tokens_computed", "model_steps", "deterministic")  # fmt: skip


def _summary(report: dict, output: Path) -> str:
    rows, m = report["rows"], report["metrics"]
    score = m.get("overall", m.get("accuracy"))
    what = "overall" if "overall" in m else "accuracy"
    text = (
        f"evaluated {rows['scored']} of {rows['total']} rows ({report['format']}): "
        f"{what} {'n/a' if score is None else f'{score:.4f}'}; report in {output / 'report.md'}"
    )
    if rows["errors"]:
        lines = ", ".join(str(e["line"]) for e in report["errors"][:10])
        more = " ..." if rows["errors"] > 10 else ""
        text += f"\n{rows['errors']} rows had errors: lines {lines}{more} (see report.json)"
    if report["plots_skipped"] and report["plots_skipped"] != "--no-plots":
        text += f"\nplots not drawn: {report['plots_skipped']}"
    return text
