"""Four-stage tuning (`reamo train`): instruction data builders, YAML configs and one trainer.

Stages: 1 UIE instruction tuning (LoRA), 2 modality alignment (projector only), 3 grounding-aware tuning (targets
carry tool calls for groundable entities), 4 invocation / meta-response over modality combinations.
"""

from reamo.tuning.config import DataConfig, TrainConfig
from reamo.tuning.data import BuildOptions, InstructionExample, read_instructions, write_instructions

__all__ = ["BuildOptions", "DataConfig", "InstructionExample", "TrainConfig", "read_instructions", "train",
           "write_instructions"]


def train(config: TrainConfig):  # noqa: ANN201 - thin lazy wrapper, keeps `import reamo.tuning` light
    """Run one tuning stage; see `reamo.tuning.trainer.train`."""
    from reamo.tuning.trainer import train as _train

    return _train(config)
