"""The engine builder: HF checkpoints -> engine directories (and ModelOpt FP8 exports).

    from engine.build import BuildSettings, build_engine
    build_engine("ckpt/", "engine/", BuildSettings(quantization="fp8"))

`reward-engine build --help` describes every setting. The builder depends on the
engine's core (checkpoint reading, the model's layer code, the engine-directory
format); the core never imports it. One module per output format: native.py
(engine directories), modelopt.py (ModelOpt FP8 HF checkpoints), trtllm.py
(TensorRT-LLM checkpoints); pipeline.py is what they share.
"""

from .native import build_engine
from .pipeline import BuildError, BuildResult
from .settings import BuildSettings

__all__ = ["BuildError", "BuildResult", "BuildSettings", "build_engine"]
