"""`reward-engine build`: the command line of the engine builder."""

from __future__ import annotations

import argparse
import sys

BUILD_DESCRIPTION = """\
Build an engine directory from an HF Llama reward checkpoint: q|k|v and gate|up fused
once, weights optionally quantized, everything stored as the engine runs it, so that
loading it (`reward-engine score --model ENGINE_DIR`, RewardEngine.from_pretrained)
does no conversion work.

Quantization (W8A8: 8-bit weights with one scale per output channel, 8-bit inputs):
  --quantization fp8    E4M3 weights and activations, for H100/H200-class GPUs (the
                        CPU runs an exact emulation: fine for building and checking,
                        slow to score with)
  --quantization int8   symmetric int8, for CPUs with 8-bit dot products (AMX-INT8,
                        AVX512-VNNI); see `reward-engine env`
  --activation-scales   static: one calibrated scale per GEMM input (fused into the
                        norm that produces it); dynamic: one per token at run time.
                        auto = static for fp8, dynamic for int8
  --kv-cache-dtype fp8  E4M3 KV cache with calibrated per-layer K and V scales

Quantized builds run a calibration set through the model (a JSONL file in the score
command's forms, or a built-in set of 88 conversations: 22 prompts x 4 responses) and
write an accuracy report (accuracy.md/.json in the engine directory): correlation,
|diff| relative to the reward scale, and pairwise preference agreement with the
unquantized model. The build warns when agreement is below 99%.

The build streams one layer at a time (memory: about one layer of weights plus the
calibration activations), writes into a hidden directory beside the target and
renames it at the end: an interrupted build never leaves a loadable engine behind.
"""

BUILD_EPILOG = """\
examples:
  reward-engine build ./Llama-3.1-Nemotron-70B-Reward-HF -o ./rm-bf16
  reward-engine build ./my-rm -o ./my-rm-fp8 --quantization fp8 --calibration prompts.jsonl
  reward-engine build ./my-rm -o ./my-rm-int8 --quantization int8 --dtype bfloat16
  reward-engine build ./my-rm -o ./my-rm-modelopt --quantization fp8 --format modelopt
  reward-engine build ./Llama-3.1-70B-RM -o ./rm70b-tp2 --tp 2   # 2 GPUs: one file per rank
  reward-engine build ./my-rm -o ./my-rm-trtllm --format trtllm --quantization fp8 --tp 2 \
      --trtllm-build
  reward-engine score --model ./my-rm-fp8 --input in.jsonl --output out.jsonl

exit status: 0 built, 2 the checkpoint, a setting or the output cannot be used
(nothing is written).
"""


def add_build_command(commands, add_dtype_argument, positive_int) -> None:
    from .settings import ACTIVATION_SCALES, FORMATS, KV_CACHE_DTYPES, QUANTIZATIONS

    p = commands.add_parser(
        "build",
        help="build an optimized engine directory from an HF checkpoint",
        description=BUILD_DESCRIPTION,
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="HF checkpoint directory")
    p.add_argument("-o", "--output", required=True, metavar="ENGINE_DIR",
                   help="directory to create")  # fmt: skip
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                   help="weight and activation quantization (default: %(default)s)")  # fmt: skip
    p.add_argument("--activation-scales", choices=ACTIVATION_SCALES, default="auto",
                   help="static (calibrated) or dynamic (per token) activation scales "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                   help="KV cache storage: auto (the compute dtype) or fp8 (default: "
                   "%(default)s)")  # fmt: skip
    p.add_argument("--calibration", metavar="FILE.jsonl",
                   help="calibration conversations (default: the built-in set)")
    p.add_argument("--calibration-size", type=positive_int, default=256, metavar="N",
                   help="use at most N conversations of it (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-model-len", type=positive_int, metavar="N",
                   help="longest sequence the engine accepts (default: the checkpoint's "
                   "max_position_embeddings)")  # fmt: skip
    p.add_argument("--format", choices=FORMATS, default="native",
                   help="native: an engine directory; modelopt: an HF checkpoint in NVIDIA "
                   "ModelOpt's FP8 format for vLLM, SGLang and TensorRT-LLM's PyTorch backend; "
                   "trtllm: a TensorRT-LLM checkpoint (config.json + rank{r}.safetensors) for "
                   "trtllm-build (default: %(default)s)")  # fmt: skip
    p.add_argument("--tp", type=positive_int, default=1, metavar="N",
                   help="tensor parallelism over N ranks: one weights file per rank (native: "
                   "load with --tensor-parallel-size N; trtllm: rank{r}.safetensors); the "
                   "heads, KV heads or intermediate size must split over N (default: "
                   "%(default)s)")  # fmt: skip
    p.add_argument("--trtllm-build", action="store_true",
                   help="--format trtllm: then run trtllm-build on it (into ENGINE_DIR/engine) "
                   "when it is on PATH; otherwise print the command to run")  # fmt: skip
    p.add_argument("--reward-token-ids", type=int, nargs="+", metavar="ID",
                   help="LlamaForCausalLM checkpoints: the token ids whose logits are the "
                   "reward (default: 0)")  # fmt: skip
    add_dtype_argument(p)
    p.add_argument("--force", action="store_true", help="replace ENGINE_DIR if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run_build)


def run_build(args: argparse.Namespace) -> int:
    from ..cli import UsageError
    from .calibration import CalibrationError
    from .pipeline import BuildError
    from .settings import BuildSettings
    from .writer import BuildTargetError

    try:
        settings = BuildSettings(
            quantization=args.quantization,
            activation_scales=args.activation_scales,
            kv_cache_dtype=args.kv_cache_dtype,
            calibration=args.calibration,
            calibration_size=args.calibration_size,
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            format=args.format,
            reward_token_ids=tuple(args.reward_token_ids) if args.reward_token_ids else None,
            tensor_parallel_size=args.tp,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.trtllm_build and settings.format != "trtllm":
        raise UsageError("--trtllm-build applies to --format trtllm")
    try:
        if settings.format == "trtllm":
            from .trtllm import export_trtllm

            result = export_trtllm(args.checkpoint, args.output, settings, force=args.force,
                                   progress=not args.no_progress)  # fmt: skip
        elif settings.format == "modelopt":
            from .modelopt import export_modelopt

            result = export_modelopt(args.checkpoint, args.output, settings, force=args.force,
                                     progress=not args.no_progress)  # fmt: skip
        else:
            from .native import build_engine

            result = build_engine(args.checkpoint, args.output, settings, force=args.force,
                                  progress=not args.no_progress)  # fmt: skip
    except (BuildError, BuildTargetError, CalibrationError) as exc:
        raise UsageError(str(exc)) from None
    if result.report is not None:
        print(f"accuracy: {result.report.summary()}", file=sys.stderr)
        if result.report.agreement_is_low:
            print("warning: pairwise agreement is below 99%: check that the calibration set "
                  "looks like your data (--calibration), or try the other --activation-scales",
                  file=sys.stderr)  # fmt: skip
    print(f"built {result.path} in {result.seconds:.1f} s", file=sys.stderr)
    if settings.format == "trtllm":
        return _trtllm_build(result.path, settings, args.trtllm_build)
    return 0


def _trtllm_build(path, settings, run: bool) -> int:
    import json

    from .trtllm import run_trtllm_build, trtllm_build_command

    config = json.loads((path / "config.json").read_text())
    command = trtllm_build_command(path, path / "engine", fp8=settings.quantization == "fp8",
                                   max_seq_len=config["max_position_embeddings"])  # fmt: skip
    if not run:
        import shlex

        print(f"to build a TensorRT-LLM engine of it:\n  {shlex.join(command)}", file=sys.stderr)
        return 0
    status = run_trtllm_build(command)
    if status:
        print(f"trtllm-build failed (exit status {status})", file=sys.stderr)
        return 1
    return 0
