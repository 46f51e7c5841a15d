"""The CodeBrain network: one copy, imported by the trainer and the engine. Imports only torch (+ safetensors
for checkpoints) and the project's contrast vocabulary."""

from codebrain_node.model.checkpoint import (
    load_inference_checkpoint,
    read_checkpoint_metadata,
    save_inference_checkpoint,
    sha256_of,
)
from codebrain_node.model.codebrain import CodeBrain, DirectRegression, ImputeOutput, count_parameters, encoder_input
from codebrain_node.model.config import ModelConfig
from codebrain_node.model.discriminator import (
    PatchDiscriminator,
    discriminator_loss,
    fake_target,
    generator_adversarial_loss,
)
from codebrain_node.model.fsq import FSQ
from codebrain_node.model.grading import decode_grades, grading_accuracy, grading_loss, ordinal_targets

__all__ = [
    "FSQ",
    "CodeBrain",
    "DirectRegression",
    "ImputeOutput",
    "ModelConfig",
    "PatchDiscriminator",
    "count_parameters",
    "decode_grades",
    "discriminator_loss",
    "encoder_input",
    "fake_target",
    "generator_adversarial_loss",
    "grading_accuracy",
    "grading_loss",
    "load_inference_checkpoint",
    "ordinal_targets",
    "read_checkpoint_metadata",
    "save_inference_checkpoint",
    "sha256_of",
]
