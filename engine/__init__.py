"""reward-engine: fast inference for LLM reward models (Llama-3.x architecture).

Public names are imported on first use, so `reward-engine --help` and other light
entry points do not pay for importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "RewardEngine": ".llm_engine",
    "AsyncRewardEngine": ".async_engine",
    "RuntimeConfig": ".config",
    "ModelConfig": ".config",
    "parse_dtype": ".config",
    "ConversationError": ".chat",
    "EngineError": ".errors",
    "EngineDeadError": ".errors",
    "EngineOverloadedError": ".errors",
    "RequestFailedError": ".errors",
    "RequestTimeoutError": ".errors",
    "RequestTooLongError": ".errors",
    "RequestCancelledError": ".errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
