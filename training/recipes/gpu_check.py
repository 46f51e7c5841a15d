"""The GPU check (#18): one prepared run for a session lent a GPU, whose printout is the report.

    python training/recipes/gpu_check.py [--case ../shared/data/Brats18_CBICA_AVG_1] [--device cuda] [--quick]

It times, on the device, what the CPU figures in the README are compared with:
  1. ``bench inference`` of the shipped (``small``) and paper configs, fp32 and bf16 weights, batch 1 and 16;
  2. ``bench train`` Stage I (generator + discriminator) and Stage II (prior) of both, bf16 autocast, batch 16,
     and the paper's 300,000 iterations extrapolated to hours at that rate (batch as timed);
  3. one end-to-end impute of a real case (``bench e2e --case``, the node's engine on the device).
``--quick`` shrinks sizes and steps to check the script itself on a CPU in a minute. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from training.bench import bench_inference, bench_train
from training.train import resolve_model_config

PAPER_ITERATIONS = 300_000


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--case", type=Path, default=None, help="A BraTS-layout case for the end-to-end impute.")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: check the script, not the device.")
    args = parser.parse_args()
    size, steps, batches, train_batch = (32, 1, (1, 2), 2) if args.quick else (256, 5, (1, 16), 16)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    started = time.perf_counter()
    print(f"# GPU check on {name} (torch {torch.__version__}), {size}² slices\n")

    print("## Inference (impute: prior encoder + common encoder + decoder)\n")
    print(_row(["config", "batch", "weights", "slices/s", "ms a slice"]))
    print(_row(["---"] * 5))
    for config in ("small", "paper"):
        cfg = resolve_model_config(config)
        for batch in batches:
            for precision in ("fp32", "bf16"):
                result = bench_inference(cfg, device, batch, size, steps, precision=precision)
                ms = 1e3 * result["seconds_per_batch"] / batch
                print(_row([config, batch, result["precision"], f"{result['slices_per_s']:.1f}", f"{ms:.1f}"]))

    print(f"\n## Training (batch {train_batch}; hours for the paper's {PAPER_ITERATIONS:,} iterations)\n")
    print(_row(["config", "stage", "precision", "steps/s", "images/s", "hours for 300k"]))
    print(_row(["---"] * 6))
    for config in ("small", "paper"):
        cfg = resolve_model_config(config)
        for stage in (1, 2):
            result = bench_train(cfg, device, train_batch, size, max(steps, 2), stage=stage)
            hours = PAPER_ITERATIONS / result["steps_per_s"] / 3600
            rates = f"{result['steps_per_s']:.2f}", f"{result['images_per_s']:.1f}"
            print(_row([config, stage, result["precision"], *rates, f"{hours:.1f}"]))

    if args.case is not None:
        print(f"\n## End to end: {args.case.name} through the node (engine on {device.type})\n", flush=True)
        env = {**os.environ, "CODEBRAIN_MODEL__DEVICE": device.type}
        command = [sys.executable, "-m", "codebrain_node", "bench", "e2e", "--case", str(args.case), "--repeats", "2"]
        subprocess.run(command, env=env, check=True)
    print(f"\n(the whole check took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
