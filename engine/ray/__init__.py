"""Scale-out on Ray (the optional `ray` extra: pip install 'reward-engine[ray]').

- ``RewardScorer`` (scorer.py): a callable class for Ray Data's ``Dataset.map_batches``,
  one engine per actor;
- ``score_files`` (data.py): a JSONL or Parquet file scored by N replicas into a
  directory of part files (`reward-engine score --ray`);
- ``reward_deployment`` / ``run_serve`` (serve.py): the HTTP server's app
  (engine/server) as a Ray Serve deployment of N replicas (`reward-engine serve --ray`).

Only this package imports ray; the rest of the engine never does.
"""

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "reward-engine's Ray support needs Ray: pip install 'reward-engine[ray]'"
    ) from exc

from .data import RayScoreError, RayScoreStats, read_output, score_files
from .scorer import OUTPUT_SCHEMA, RewardScorer

__all__ = ["OUTPUT_SCHEMA", "RayScoreError", "RayScoreStats", "RewardScorer", "read_output",
           "score_files"]
