"""RewardEngine: the synchronous Python API.

    from engine import RewardEngine
    eng = RewardEngine.from_pretrained("path/to/checkpoint", dtype="bfloat16")
    eng.score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
    eng.score_responses([{"role": "user", "content": "2+2?"}], ["4", "5"])
    eng.score_token_ids([[128000, 9906, 0]])

Each call returns one reward per conversation: a float for scalar heads, a list of
floats for multi-attribute heads (num_labels > 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .batching import pack_by_token_budget
from .chat import ChatFormatter
from .checkpoint import load_weights
from .config import CAUSAL_LM, ModelConfig, parse_dtype
from .model import BatchMetadata, LlamaRewardModel

logger = logging.getLogger(__name__)

Reward = float | list[float]


class RewardEngine:
    """Scores conversations with a Llama-architecture reward model."""

    def __init__(
        self,
        model: LlamaRewardModel,
        chat: ChatFormatter | None,
        max_num_batched_tokens: int = 4096,
        max_model_len: int | None = None,
    ):
        if max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        self.model = model
        self.chat = chat
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len or model.max_position
        self.num_labels = model.w.head.shape[0]

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        dtype: str | torch.dtype = "bfloat16",
        *,
        max_num_batched_tokens: int = 4096,
        max_model_len: int | None = None,
        reward_token_ids: Sequence[int] | None = None,
        num_threads: int | None = None,
        device: str | torch.device = "cpu",
    ) -> RewardEngine:
        """Load an HF Llama reward checkpoint directory.

        dtype: compute dtype ("bfloat16" default, "float16", "float32" or a torch dtype).
        max_num_batched_tokens: tokens per forward pass (the token budget).
        max_model_len: longest accepted sequence (default: max_position_embeddings).
        reward_token_ids: for LlamaForCausalLM checkpoints, the token ids whose logits
            at the last position are the reward (default [0], the Nemotron-Reward-HF
            convention); ignored for sequence-classification heads.
        num_threads: CPU threads for torch and the C++ kernels (default: torch's).
        """
        if num_threads:
            torch.set_num_threads(int(num_threads))
        cfg = ModelConfig.from_pretrained(model_dir)
        compute_dtype = parse_dtype(dtype)
        token_ids = tuple(reward_token_ids) if reward_token_ids is not None else (0,)
        if cfg.head_kind != CAUSAL_LM and reward_token_ids is not None:
            logger.warning("reward_token_ids ignored: %s has a score head", cfg.architecture)
        start = time.perf_counter()
        weights = load_weights(model_dir, cfg, compute_dtype, token_ids)
        if str(device) != "cpu":
            weights = _to_device(weights, torch.device(device))
        logger.info("loaded %s in %.1fs", model_dir, time.perf_counter() - start)
        max_len = max_model_len or cfg.max_position_embeddings
        model = LlamaRewardModel(cfg, weights, max_position=max_len)
        has_tokenizer = (Path(model_dir) / "tokenizer.json").is_file()
        chat = ChatFormatter.from_pretrained(model_dir) if has_tokenizer else None
        return cls(model, chat, max_num_batched_tokens, max_len)

    # -- public scoring API -------------------------------------------------------

    def score(self, conversations: Sequence[list[dict]], progress=None) -> list[Reward]:
        """One reward per conversation (a list of {"role", "content"} messages)."""
        chat = self._require_chat()
        return self.score_token_ids(chat.encode_batch(conversations), progress)

    def score_responses(self, prompt, responses: Sequence[str], progress=None) -> list[Reward]:
        """Rewards of N responses to one prompt (a string or a list of messages)."""
        chat = self._require_chat()
        ids = [chat.encode(chat.conversation(prompt, r)) for r in responses]
        return self.score_token_ids(ids, progress)

    def score_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        progress: Callable[[int], None] | None = None,
    ) -> list[Reward]:
        """Rewards of already-tokenized sequences (each the full formatted conversation).

        `progress`, if given, is called with the number of tokens of each finished batch.
        """
        seqs = [list(ids) for ids in token_ids]
        for i, ids in enumerate(seqs):
            self._check_length(i, ids)
        results: list[Reward | None] = [None] * len(seqs)
        for batch in pack_by_token_budget([len(s) for s in seqs], self.max_num_batched_tokens):
            rewards = self._forward([seqs[i] for i in batch])
            for i, r in zip(batch, rewards, strict=True):
                results[i] = r
            if progress is not None:
                progress(sum(len(seqs[i]) for i in batch))
        return results  # type: ignore[return-value]

    # -- internals ----------------------------------------------------------------

    def _require_chat(self) -> ChatFormatter:
        if self.chat is None:
            raise RuntimeError(
                "this checkpoint has no tokenizer.json: use score_token_ids(), or copy the "
                "model's tokenizer files into the checkpoint directory"
            )
        return self.chat

    def _check_length(self, index: int, ids: list[int]) -> None:
        if not ids:
            raise ValueError(f"sequence {index} is empty: nothing to score")
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"sequence {index} has {len(ids)} tokens, more than the model's maximum "
                f"length of {self.max_model_len}"
            )
        vocab = self.model.cfg.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"sequence {index} has token ids outside [0, {vocab})")

    def _forward(self, seqs: list[list[int]]) -> list[Reward]:
        device = self.model.device
        flat = torch.tensor([t for s in seqs for t in s], dtype=torch.int64, device=device)
        meta = BatchMetadata.from_lengths([len(s) for s in seqs], device=device)
        rewards = self.model.rewards(flat, meta).cpu()
        if self.num_labels == 1:
            return rewards[:, 0].tolist()
        return rewards.tolist()


def _to_device(weights, device):
    from dataclasses import fields, replace

    def move(obj):
        return replace(
            obj,
            **{
                f.name: getattr(obj, f.name).to(device)
                for f in fields(obj)
                if isinstance(getattr(obj, f.name), torch.Tensor)
            },
        )

    moved = move(weights)
    moved.layers = [move(layer) for layer in weights.layers]
    return moved
