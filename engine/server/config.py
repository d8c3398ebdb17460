"""ServerConfig: what `reward-engine serve` was asked to do, as one validated record."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

API_KEY_ENV = "REWARD_ENGINE_API_KEY"


@dataclass(slots=True)
class ServerConfig:
    """The server's options (the command line's, one field each).

    ``max_queue`` bounds the sequences waiting for the engine: a request that would
    push past it is answered 503 with Retry-After at once. ``request_timeout`` (seconds,
    None: no limit) applies to each request as a whole; a sequence not started by then
    is never computed. ``engine_kwargs`` go to ``RewardEngine.from_pretrained`` when the
    app loads the engine itself.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queue: int = 1024
    max_batch_tokens: int = 4096
    max_num_seqs: int = 256
    request_timeout: float | None = 120.0
    max_request_bytes: int = 16 * 1024 * 1024
    max_items: int = 1024
    served_model_name: str | None = None
    dtype: str = "auto"
    retry_after_s: int = 1
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_batch_tokens", "max_num_seqs", "max_request_bytes",
                     "max_items", "retry_after_s"):  # fmt: skip
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"ServerConfig.{name} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be positive, got {self.request_timeout}")
        if self.api_key == "":
            self.api_key = None

    @property
    def model_name(self) -> str:
        """The name /v1/models reports: --served-model-name, else the model path."""
        return self.served_model_name or self.model

    def with_env_api_key(self) -> ServerConfig:
        """This config with the API key from REWARD_ENGINE_API_KEY when none was given."""
        if self.api_key is None and os.environ.get(API_KEY_ENV):
            self.api_key = os.environ[API_KEY_ENV]
        return self
