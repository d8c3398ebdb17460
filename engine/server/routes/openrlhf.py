"""POST /get_reward: OpenRLHF's remote reward model protocol.

OpenRLHF's trainer posts {"query": [...], "prompts": [...], "labels": [...]}
(openrlhf/utils/remote_rm_utils.py, remote_rm_fn / request_api_wrapper, which retries
any failed request) and reads "rewards" (and "scores", "extra_logs") from the answer
(openrlhf/trainer/ppo_utils/experience_maker.py); its reference server is
openrlhf/cli/serve_rm.py. A query is the prompt and response already chat-formatted and
decoded with special tokens kept, so it is tokenized with control tokens parsed, and a
BOS is added only when the text does not begin with one.

A multi-attribute head answers its first attribute in "rewards" and "scores" (the
trainer needs one number per query) and every attribute by name in "extra_logs".
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..schemas import GetRewardRequest, GetRewardResponse
from .common import (
    SCORING_ERRORS,
    attribute_values,
    get_scorer,
    note_work,
    require_finite,
    require_scorable,
)

router = APIRouter(tags=["OpenRLHF"])


@router.post("/get_reward", response_model=GetRewardResponse, responses=SCORING_ERRORS,
             summary="Rewards of chat-formatted queries (OpenRLHF remote RM)")  # fmt: skip
async def get_reward(body: GetRewardRequest, request: Request):
    scorer = get_scorer(request)
    scorer.require_chat()
    # An empty list is answered, not refused: OpenRLHF splits a batch over its servers and
    # a server can get an empty slice.
    scorer.check_items(max(len(body.query), 1), "queries")
    seqs = [scorer.encode_text(q) for q in body.query]
    for i, ids in enumerate(seqs):
        require_scorable(scorer, ids, f"query[{i}]")
    note_work(request, len(seqs), sum(map(len, seqs)))
    rewards = await scorer.score(request, seqs) if seqs else []
    require_finite(scorer, rewards)
    values = [attribute_values(r) for r in rewards]
    first = [v[0] for v in values]
    extra = {} if scorer.num_labels == 1 else {
        name: [v[k] for v in values] for k, name in enumerate(scorer.labels)}  # fmt: skip
    return {"rewards": first, "scores": first, "extra_logs": extra}
