"""reward-engine: fast inference for LLM reward models (Llama-3.x architecture)."""

from .config import ModelConfig, parse_dtype
from .llm_engine import RewardEngine

__all__ = ["ModelConfig", "RewardEngine", "parse_dtype"]
__version__ = "0.1.0"
