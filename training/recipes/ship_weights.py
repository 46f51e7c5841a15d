"""Turn a Stage II run into the shipped inference checkpoint: fp16 weights, name/version in the metadata, and its
digest in weights/SHA256SUMS (checked at every load). The run's subject split goes with it, so
``codebrain-node evaluate --split test`` scores the shipped file on the cases its training held out.

    python training/recipes/ship_weights.py RUN_DIR NAME VERSION [--no-confidence]

The confidence output is on unless ``--no-confidence``: a model whose least confident fifth of pixels does not
carry clearly larger errors than its most confident fifth on held-out cases (``evaluate``'s confidence table)
ships without it, so the review page never shows a map that does not mean what it says.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from codebrain_node.engine.weights import CHECKSUMS, WEIGHTS_DIR
from codebrain_node.model import CodeBrain, load_inference_checkpoint, save_inference_checkpoint, sha256_of
from codebrain_node.model.checkpoint import read_checkpoint_metadata


def ship(run_dir: Path, name: str, version: str, confidence: bool = True, weights_dir: Path = WEIGHTS_DIR) -> Path:
    trained = load_inference_checkpoint(run_dir / "model.safetensors")
    # The confidence map only reads the prior's grading probabilities: same weights, one more output.
    cfg = dataclasses.replace(trained.cfg, confidence=confidence, name=name)
    model = CodeBrain(cfg)
    model.load_state_dict(trained.state_dict())
    target = weights_dir / f"codebrain-{name}.safetensors"
    checksums = weights_dir / CHECKSUMS.name
    metadata = {"model_name": f"codebrain-{name}", "model_version": version}
    split = read_checkpoint_metadata(run_dir / "model.safetensors").get("data_split")
    if split is not None:
        metadata["data_split"] = split
    save_inference_checkpoint(model, target, metadata, half=True)
    target.chmod(0o644)  # a package file: readable by the service user, whoever built it
    lines = [
        line for line in (checksums.read_text().splitlines() if checksums.exists() else []) if target.name not in line
    ]
    checksums.write_text("\n".join([*lines, f"{sha256_of(target)}  {target.name}"]) + "\n")
    return target


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--no-confidence"]
    print(ship(Path(arguments[0]), arguments[1], arguments[2], confidence="--no-confidence" not in sys.argv))
