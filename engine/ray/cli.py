"""`reward-engine score --ray` and `reward-engine serve --ray`: the command lines' Ray
halves (engine/cli.py and engine/server/cli.py parse the flags)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import ray

logger = logging.getLogger("engine.ray")


def connect(address: str | None, quiet: bool) -> None:
    """Join the cluster at ``address`` ($RAY_ADDRESS when None), else start a local one."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"log_to_driver": not quiet, "include_dashboard": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)


def engine_options(args: argparse.Namespace) -> dict:
    """RewardEngine.from_pretrained keywords from the score command's flags."""
    threads = args.threads or max(1, int(args.cpus_per_replica))
    options = {"dtype": args.dtype, "max_num_batched_tokens": args.max_batch_tokens,
               "num_threads": threads, "verify": not args.no_verify,
               "deterministic": args.deterministic}  # fmt: skip
    if args.kv_cache_dtype:
        options["kv_cache_dtype"] = args.kv_cache_dtype
    return options


def run_ray_score(args: argparse.Namespace) -> int:
    from ..cli import UsageError
    from .data import RayScoreError, input_format, score_files

    if args.input == "-" or args.output == "-":
        raise UsageError("--ray reads a file and writes a directory: give paths, not '-'")
    if not os.path.isfile(args.input):
        raise UsageError(f"cannot read input {args.input}: no such file")
    try:
        input_format(args.input)
    except RayScoreError as exc:
        raise UsageError(str(exc)) from None
    connect(args.ray_address, args.no_progress)
    ray.data.DataContext.get_current().enable_progress_bars = not args.no_progress
    try:
        stats = score_files(
            os.path.abspath(args.model), args.input, args.output,
            replicas=args.replicas, output_format=args.output_format,
            num_cpus=args.cpus_per_replica, num_gpus=args.gpus_per_replica or 0.0,
            batch_size=args.batch_size,
            tensor_parallel_size=getattr(args, "tensor_parallel_size", 1) or 1,
            engine_options=engine_options(args),
        )  # fmt: skip
    except RayScoreError as exc:
        raise UsageError(str(exc)) from None
    except ray.exceptions.RayError as exc:  # e.g. a replica could not load the model
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"the Ray run failed: {first}") from None
    print(stats.summary(), file=sys.stderr)
    return 1 if stats.error_lines else 0


def run_ray_serve(args: argparse.Namespace, config) -> int:
    """`reward-engine serve --ray`: until Ctrl-C / SIGTERM, then Serve shuts down."""
    import signal

    from .serve import run_serve

    connect(args.ray_address, quiet=False)
    if config.engine_kwargs.get("num_threads") is None:
        config.engine_kwargs["num_threads"] = max(1, int(args.cpus_per_replica))
    signal.signal(signal.SIGTERM, _interrupt)  # stops like Ctrl-C: Serve shuts down
    print(f"serving {config.model} on {args.replicas} Ray Serve replica(s) at "
          f"http://{config.host}:{config.port}", file=sys.stderr)  # fmt: skip
    run_serve(config, replicas=args.replicas, max_ongoing_requests=args.max_ongoing_requests,
              num_cpus=args.cpus_per_replica, num_gpus=args.gpus_per_replica)  # fmt: skip
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt
