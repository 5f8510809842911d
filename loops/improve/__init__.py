"""Self-improvement rounds: generate -> grade -> harvest -> train -> export -> evaluate.

Only ``train`` imports torch/TRL (lazily, when a round trains); the rest is light.
"""

from loopwright.loops.improve.config import (
    METHODS,
    GrpoConfig,
    ImproveConfig,
    Method,
    TrainConfig,
)

__all__ = ["METHODS", "GrpoConfig", "ImproveConfig", "Method", "TrainConfig"]
