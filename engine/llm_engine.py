"""RewardEngine: the synchronous Python API.

    from engine import RewardEngine
    eng = RewardEngine.from_pretrained("path/to/checkpoint")  # dtype="auto"
    eng.score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
    eng.score_responses([{"role": "user", "content": "2+2?"}], ["4", "5"])
    eng.score_token_ids([[128000, 9906, 0]])

Each call returns one reward per conversation: a float for scalar heads, a list of
floats for multi-attribute heads (num_labels > 1).

Every call goes through the same machinery as the async engine: the sequences
become requests of the continuous-batching ``Scheduler``, which packs them into
steps under the token budget (chunking long ones) and serves shared prefixes from
the paged KV cache, so the N responses of one prompt compute the prompt once.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .chat import ChatFormatter
from .checkpoint import move_weights
from .config import GIB, RuntimeConfig, kv_cache_dtype
from .errors import EngineDeadError, RequestFailedError
from .hardware import dtype_name, resolve_dtype
from .kv_cache import KVCacheManager
from .loading import load_model
from .model import LlamaRewardModel
from .request import Request
from .runner import KVCachePool, ModelRunner, kv_cache_num_blocks
from .scheduler import Scheduler, SchedulerConfig, SchedulerOutput

logger = logging.getLogger(__name__)

Reward = float | list[float]


class RewardEngine:
    """Scores conversations with a Llama-architecture reward model.

    Not thread-safe; ``AsyncRewardEngine`` wraps one for concurrent callers.
    ``close()`` (or ``with engine:``) stops a tensor-parallel engine's worker processes;
    a single-process engine holds nothing that needs closing.
    """

    def __init__(
        self,
        model: LlamaRewardModel,
        chat: ChatFormatter | None,
        runtime: RuntimeConfig | None = None,
        parallel=None,
    ):
        runtime = runtime or RuntimeConfig()
        if runtime.deterministic and not model.deterministic:
            raise ValueError(
                "RuntimeConfig.deterministic needs a model built with deterministic=True "
                "(RewardEngine.from_pretrained(..., deterministic=True) does both)"
            )
        self.model = model
        self.chat = chat
        self.runtime = runtime
        self.max_num_batched_tokens = runtime.max_num_batched_tokens
        self.max_model_len = min(runtime.max_model_len or model.max_position, model.max_position)
        self.num_labels = model.w.head.shape[0]
        # parallel: a tensor-parallel executor (engine/distributed) or None; the model is
        # then rank 0's shard and the pool rank 0's slice.
        self.parallel = parallel
        num_blocks = kv_cache_num_blocks(
            runtime, model.cfg, model.dtype, model.device, self.max_model_len,
            pools_sharing_memory=1 if parallel is None else parallel.pools_sharing_memory,
        )  # fmt: skip
        cache_dtype = kv_cache_dtype(runtime.kv_cache_dtype, model.dtype)
        self.kv_cache = KVCachePool(
            model.cfg, num_blocks, runtime.block_size, cache_dtype, model.device,
            pretouch=runtime.kv_cache_pretouch,
        )  # fmt: skip
        if num_blocks * runtime.block_size < self.max_model_len:
            logger.warning(
                "the KV pool holds %d tokens, less than max_model_len=%d: longer "
                "sequences are refused",
                num_blocks * runtime.block_size,
                self.max_model_len,
            )
        logger.info(
            "KV pool: %d blocks of %d tokens (%.2f GiB, %s)",
            num_blocks,
            runtime.block_size,
            self.kv_cache.nbytes / GIB,
            str(cache_dtype).removeprefix("torch."),
        )
        if parallel is None:
            self.runner = ModelRunner(model, self.kv_cache)
        else:
            self.runner = parallel.make_runner(model, self.kv_cache, runtime)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_batched_tokens=runtime.max_num_batched_tokens,
                max_num_seqs=runtime.max_num_seqs,
                max_model_len=self.max_model_len,
                max_waiting_requests=runtime.max_waiting_requests,
                max_chunk_tokens=runtime.max_chunk_tokens,
            ),
            KVCacheManager(num_blocks, runtime.block_size, runtime.enable_prefix_caching),
        )
        self._request_ids = itertools.count()
        self._step_stats = {
            "steps": 0,
            "step_time_s": 0.0,
            "batch_tokens": 0,
            "last_step_time_s": 0.0,
            "last_batch_tokens": 0,
        }

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        dtype: str | torch.dtype = "auto",
        *,
        max_num_batched_tokens: int = 4096,
        max_model_len: int | None = None,
        reward_token_ids: Sequence[int] | None = None,
        num_threads: int | None = None,
        device: str | torch.device = "cpu",
        verify: bool = True,
        runtime: RuntimeConfig | None = None,
        tensor_parallel_size: int = 1,
        **runtime_options,
    ) -> RewardEngine:
        """Load an engine directory (made by `reward-engine build`) or an HF Llama reward
        checkpoint directory.

        dtype: compute dtype: "auto" (default: bf16 on GPUs and on CPUs with bf16 dot
            products, AVX512-BF16 or AMX; float32 on other CPUs; see engine/hardware.py),
            "bfloat16", "float16", "float32" or a torch dtype.
        max_num_batched_tokens: tokens per forward pass (the token budget).
        max_model_len: longest accepted sequence (default: the engine's build setting,
            else max_position_embeddings).
        reward_token_ids: for LlamaForCausalLM checkpoints, the token ids whose logits
            at the last position are the reward (default [0], the Nemotron-Reward-HF
            convention); ignored for sequence-classification heads. An engine directory
            keeps the ids it was built with.
        verify: check an engine directory's files against the sha256 in its manifest
            (reads every byte once; skip it for very large engines you trust).
        num_threads: CPU threads for torch and the C++ kernels (default: torch's; with
            tensor parallelism on CPU, per rank, default torch's divided by the ranks).
        tensor_parallel_size: N > 1 splits every layer over N processes (this one is
            rank 0; the others are spawned, and stopped by ``close()``): on GPUs rank r
            runs on cuda:r, on CPU all share the host (README, "Tensor parallelism").
            An HF checkpoint is sharded at load; an engine directory built with
            ``--tp N`` is read rank by rank and loads only with that N.
        runtime / runtime_options: a RuntimeConfig, or its fields as keywords
            (block_size, kv_cache_gib, num_kv_blocks, max_num_seqs, enable_prefix_caching,
            kv_cache_dtype, deterministic, ...); the two keywords above override it.
            kv_cache_dtype="fp8" keeps the KV cache in E4M3 (half the memory of bf16) with
            each layer's k_scale / v_scale, 1.0 for a checkpoint that has none (a warning
            says so); when it is not given, an engine directory's build setting applies.
            deterministic=True makes every reward independent of the batch it runs in, bit
            for bit (README).
        """
        kv_dtype_given = "kv_cache_dtype" in runtime_options or (
            runtime is not None and runtime.kv_cache_dtype != "auto"
        )
        runtime = replace(
            runtime or RuntimeConfig(),
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            **runtime_options,
        )
        if type(tensor_parallel_size) is not int or tensor_parallel_size < 1:
            raise ValueError(
                f"tensor_parallel_size must be a positive int, got {tensor_parallel_size!r}"
            )
        if num_threads and tensor_parallel_size == 1:
            torch.set_num_threads(int(num_threads))
        compute_dtype, why = resolve_dtype(dtype, device)
        logger.info("compute dtype %s (%s)", dtype_name(compute_dtype), why)
        start = time.perf_counter()
        ids = tuple(reward_token_ids) if reward_token_ids is not None else None
        if tensor_parallel_size == 1:
            parallel = None
            loaded = load_model(model_dir, compute_dtype, ids, verify=verify)
        else:
            from .distributed import TensorParallelExecutor  # only when asked for

            parallel = TensorParallelExecutor.start(
                model_dir, tensor_parallel_size, compute_dtype, ids, verify, device, num_threads
            )
            device = parallel.device
        try:
            if parallel is not None:
                loaded = parallel.load()
            engine = cls._from_loaded(model_dir, loaded, device, runtime, max_model_len,
                                      kv_dtype_given, parallel, start)  # fmt: skip
        except BaseException:
            if parallel is not None:
                parallel.close()
            raise
        return engine

    @classmethod
    def _from_loaded(
        cls, model_dir, loaded, device, runtime, max_model_len, kv_dtype_given, parallel, start
    ) -> RewardEngine:  # fmt: skip
        weights = loaded.weights
        if str(device) != "cpu":
            weights = move_weights(weights, torch.device(device))
        logger.info("loaded %s in %.1fs", model_dir, time.perf_counter() - start)
        if max_model_len is None and loaded.max_model_len is not None:
            max_model_len = loaded.max_model_len
            runtime = replace(runtime, max_model_len=max_model_len)
        if not kv_dtype_given and loaded.kv_cache_dtype != runtime.kv_cache_dtype:
            logger.info("KV cache %s, as the engine was built", loaded.kv_cache_dtype)
            runtime = replace(runtime, kv_cache_dtype=loaded.kv_cache_dtype)
        if runtime.deterministic and torch.device(device).type == "cuda":
            _check_deterministic_on_gpu(weights)
        make_model = LlamaRewardModel if parallel is None else parallel.make_model
        model = make_model(
            loaded.cfg, weights, max_position=max_model_len, deterministic=runtime.deterministic
        )
        has_tokenizer = (Path(model_dir) / "tokenizer.json").is_file()
        chat = ChatFormatter.from_pretrained(model_dir) if has_tokenizer else None
        return cls(model, chat, runtime, parallel=parallel)

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Stop a tensor-parallel engine's workers (a no-op otherwise); idempotent.
        Later calls of a closed tensor-parallel engine raise EngineDeadError."""
        if self.parallel is not None:
            self.parallel.close()

    def __enter__(self) -> RewardEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- public scoring API -------------------------------------------------------

    def score(self, conversations: Sequence[list[dict]], progress=None) -> list[Reward]:
        """One reward per conversation (a list of {"role", "content"} messages)."""
        chat = self._require_chat()
        return self.score_token_ids(chat.encode_batch(conversations), progress)

    def score_responses(self, prompt, responses: Sequence[str], progress=None) -> list[Reward]:
        """Rewards of N responses to one prompt (a string or a list of messages).

        The conversations share the prompt's tokens, so the prefix cache computes
        the prompt once and each response after it.
        """
        chat = self._require_chat()
        ids = [chat.encode(chat.conversation(prompt, r)) for r in responses]
        return self.score_token_ids(ids, progress)

    def score_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        progress: Callable[[int], None] | None = None,
    ) -> list[Reward]:
        """Rewards of already-tokenized sequences (each the full formatted conversation).

        Every sequence is checked before anything runs (ValueError naming the first bad
        one). `progress`, if given, is called after each step with the number of tokens
        of the sequences that step finished.
        """
        seqs = [tuple(map(int, ids)) for ids in token_ids]
        for i, ids in enumerate(seqs):
            self.check_token_ids(ids, i)
        if self.scheduler.has_unfinished_requests():
            raise RuntimeError("the engine is busy with other requests (used by an async engine?)")
        results: list[Reward | None] = [None] * len(seqs)
        index: dict[str, int] = {}
        pending = deque(enumerate(seqs))
        try:
            while pending or self.scheduler.has_unfinished_requests():
                # Feed the queue up to its bound: a huge call never trips the overload error.
                while pending and self.scheduler.num_waiting < self.runtime.max_waiting_requests:
                    i, ids = pending.popleft()
                    request = self.add_request(ids)
                    index[request.request_id] = i
                finished, failed = self.step()
                if failed:
                    raise failed[0].error
                for request, reward in finished:
                    results[index.pop(request.request_id)] = reward
                if progress is not None and finished:
                    progress(sum(r.num_tokens for r, _ in finished))
        finally:
            for request_id in index:  # an error or an interrupt: withdraw what is left
                self.scheduler.cancel(request_id)
        return results  # type: ignore[return-value]

    def reset_prefix_cache(self) -> int:
        """Forget every cached block not held by a request; returns how many were dropped."""
        return self.scheduler.kv_cache.reset_prefix_cache()

    def metrics(self) -> dict[str, int | float]:
        """Counters as a plain dict: requests, tokens requested vs computed, prefix-cache
        hit rate, KV blocks used / cached / free, step time and batch tokens."""
        s = self._step_stats
        steps = s["steps"]
        return {
            **self.scheduler.metrics(),
            "model_steps": steps,
            "step_time_last_s": s["last_step_time_s"],
            "step_time_mean_s": s["step_time_s"] / steps if steps else 0.0,
            "step_time_total_s": s["step_time_s"],
            "batch_tokens_last": s["last_batch_tokens"],
            "batch_tokens_mean": s["batch_tokens"] / steps if steps else 0.0,
            "block_size": self.kv_cache.block_size,
            "kv_cache_bytes": self.kv_cache.nbytes,
            "deterministic": self.runtime.deterministic,
            **({} if self.parallel is None else self.parallel.metrics(self.model)),
        }

    # -- the request path (shared with AsyncRewardEngine) ------------------------

    def check_token_ids(self, ids: Sequence[int], index: int | None = None) -> None:
        """ValueError unless ``ids`` is a sequence this engine can score."""
        what = "sequence" if index is None else f"sequence {index}"
        if not ids:
            raise ValueError(f"{what} is empty: nothing to score")
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"{what} has {len(ids)} tokens, more than the model's maximum "
                f"length of {self.max_model_len}"
            )
        vocab = self.model.cfg.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"{what} has token ids outside [0, {vocab})")
        kv = self.scheduler.kv_cache
        if kv.num_blocks_needed(len(ids)) > kv.num_blocks:
            raise ValueError(
                f"{what} has {len(ids)} tokens, more than the KV cache pool holds "
                f"({kv.num_blocks} blocks of {kv.block_size}); give the engine a larger "
                "kv_cache_gib"
            )

    def add_request(
        self, ids: Sequence[int], priority: int = 0, deadline: float | None = None
    ) -> Request:
        """Queue checked token ids; raises the request's error if it can never run."""
        request = Request(f"req-{next(self._request_ids)}", tuple(ids), priority, deadline)
        self.scheduler.add_request(request)
        if request.error is not None:
            raise request.error
        return request

    def step(self) -> tuple[list[tuple[Request, Reward]], list[Request]]:
        """Schedule and run one step: (finished requests with rewards, failed requests)."""
        failed = self.scheduler.expire()
        out = self.scheduler.schedule()
        start = time.perf_counter()
        try:
            rewards, errors = self.execute(out)
        except EngineDeadError as exc:
            self.abandon_step(out, str(exc))
            raise
        except BaseException:  # an interrupt: the step may be half written
            self.abandon_step(out, "the step was interrupted")
            raise
        finished, aborted = self.finish_step(out, rewards, errors, time.perf_counter() - start)
        return finished, failed + aborted

    def execute(self, out: SchedulerOutput) -> tuple[dict[str, list[float]], dict[str, str]]:
        """Run the model on a step (touches no scheduler state, so it may run in a worker
        thread). If the batch raises, each chunk is rerun alone so that only the chunks
        that fail on their own fail: returns (rewards, {request_id: reason})."""
        try:
            return self.runner.execute(out.chunks), {}
        except EngineDeadError:  # no chunk can run any more: nothing to isolate
            raise
        except Exception as exc:  # noqa: BLE001 - isolated below, reported per request
            if len(out.chunks) == 1:
                return {}, {out.chunks[0].request_id: f"{type(exc).__name__}: {exc}"}
            logger.warning(
                "step %d failed (%s); rerunning its %d chunks one by one",
                out.step,
                exc,
                len(out.chunks),
            )
        rewards, errors = {}, {}
        for chunk in out.chunks:
            try:
                rewards.update(self.runner.execute([chunk]))
            except EngineDeadError:
                raise
            except Exception as exc:  # noqa: BLE001
                errors[chunk.request_id] = f"{type(exc).__name__}: {exc}"
        return rewards, errors

    def finish_step(
        self,
        out: SchedulerOutput,
        rewards: dict[str, list[float]],
        errors: dict[str, str],
        seconds: float,
    ) -> tuple[list[tuple[Request, Reward]], list[Request]]:
        """Apply a computed step to the scheduler: (finished requests with rewards,
        requests failed because their chunk failed)."""
        failed = []
        for request_id, reason in errors.items():
            request = self.scheduler.abort(
                request_id, RequestFailedError(f"request {request_id!r} failed: {reason}")
            )
            if request is not None:
                failed.append(request)
        finished = self.scheduler.update_after_step(out)
        if not out.is_empty:
            s = self._step_stats
            s["steps"] += 1
            s["step_time_s"] += seconds
            s["batch_tokens"] += out.num_batched_tokens
            s["last_step_time_s"] = seconds
            s["last_batch_tokens"] = out.num_batched_tokens
        return [(r, self.to_reward(rewards[r.request_id])) for r in finished], failed

    def abandon_step(self, out: SchedulerOutput, reason: str) -> None:
        """Fail every request of a step that did not complete, then close the step, so
        no half-written block is ever registered in the prefix cache."""
        for chunk in out.chunks:
            self.scheduler.abort(
                chunk.request_id, RequestFailedError(f"request {chunk.request_id!r}: {reason}")
            )
        self.scheduler.update_after_step(out)

    def to_reward(self, row: list[float]) -> Reward:
        return row[0] if self.num_labels == 1 else row

    # -- internals ----------------------------------------------------------------

    def _require_chat(self) -> ChatFormatter:
        if self.chat is None:
            raise RuntimeError(
                "this checkpoint has no tokenizer.json: use score_token_ids(), or copy the "
                "model's tokenizer files into the checkpoint directory"
            )
        return self.chat


def _check_deterministic_on_gpu(weights) -> None:
    quantized = {q.quantization for layer in weights.layers for q in layer.linears().values()}
    quantized.discard(None)
    if quantized:
        raise ValueError(
            f"deterministic=True with {'/'.join(sorted(quantized)).upper()} W8A8 layers runs on "
            "CPU only: the GPU FP8/INT8 GEMMs choose their kernels by the batch shape. Use "
            "device='cpu', or an unquantized checkpoint"
        )
    logger.warning(
        "deterministic mode on a GPU: batch_invariant_linear runs its Triton kernel, which "
        "has not been verified on a GPU yet (README, Deterministic mode)"
    )
