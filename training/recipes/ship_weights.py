"""Turn a Stage II run into the shipped inference checkpoint: fp16 weights, confidence output on, name/version in
the metadata, and its digest in weights/SHA256SUMS (checked at every load).

    python training/recipes/ship_weights.py RUN_DIR NAME VERSION
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from codebrain_node.engine.weights import CHECKSUMS, WEIGHTS_DIR
from codebrain_node.model import CodeBrain, load_inference_checkpoint, save_inference_checkpoint, sha256_of


def ship(run_dir: Path, name: str, version: str) -> Path:
    trained = load_inference_checkpoint(run_dir / "model.safetensors")
    # The confidence map only reads the prior's grading probabilities: same weights, one more output.
    cfg = dataclasses.replace(trained.cfg, confidence=True, name=name)
    model = CodeBrain(cfg)
    model.load_state_dict(trained.state_dict())
    target = WEIGHTS_DIR / f"codebrain-{name}.safetensors"
    save_inference_checkpoint(model, target, {"model_name": f"codebrain-{name}", "model_version": version}, half=True)
    lines = [
        line for line in (CHECKSUMS.read_text().splitlines() if CHECKSUMS.exists() else []) if target.name not in line
    ]
    CHECKSUMS.write_text("\n".join([*lines, f"{sha256_of(target)}  {target.name}"]) + "\n")
    return target


if __name__ == "__main__":
    print(ship(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
