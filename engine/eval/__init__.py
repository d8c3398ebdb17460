"""Reward-model evaluation (`reward-engine eval`): RewardBench v1 and v2 and preference
pairs from JSONL or Parquet, scored with a RewardEngine into a report with plots.

formats.py  reading rows and telling their format; conversations of a row
scoring.py  rows through the engine, a row's responses together (shared prompts once)
metrics.py  the figures (accuracy, sections, best-of-N, the Ties score, margins)
rewardbench_data.py  RewardBench's subset->section mapping and weights, with their source
report.py   report.json, report.md, scores.jsonl
plots.py    PNG plots (matplotlib, the `eval` extra)
cli.py      the subcommand's parser and runner
"""
