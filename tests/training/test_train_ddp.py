"""Two CPU processes on the gloo backend train a tiny model through DDP (Stage I, then Stage II from that run)
and end with identical weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from standin_data import make_splits, tiny_model_config, write_train_toml

from codebrain_node.model import CodeBrain
from tests.dicom_fixtures import free_port
from training.train import train


def _worker(rank: int, world_size: int, port: int, config: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    # One process group for both stages (train() leaves a group it did not create alone).
    torch_dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg = tiny_model_config()
        splits = make_splits(cfg.contrasts)
        stage1 = train(1, config, None, Path(out) / "s1", model_config=cfg, datasets=splits, device="cpu")
        stage1_state = {k: v.clone() for k, v in stage1.model.state_dict().items()}
        stage2 = train(2, config, None, Path(out) / "s2", from_run=Path(out) / "s1", datasets=splits, device="cpu")
        torch.save(
            {
                "stage1": stage1_state,
                "stage2": stage2.model.state_dict(),
                "steps": (stage1.step, stage2.step),
                "loss": stage1.last_metrics["loss"],
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        torch_dist.destroy_process_group()


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    config = write_train_toml(tmp_path / "ddp.toml", steps=3, gan_start=1)
    mp.spawn(_worker, args=(2, free_port(), str(config), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["steps"] == rank1["steps"] == (3, 2)
    for stage in ("stage1", "stage2"):
        assert rank0[stage].keys() == rank1[stage].keys()
        for name, weight in rank0[stage].items():
            assert torch.equal(weight, rank1[stage][name]), f"ranks disagree on {stage} {name}"
    # Logged losses are averaged over ranks, so both ranks report the same global figure.
    assert rank0["loss"] == rank1["loss"]
    # Only rank 0 wrote the run folders.
    for run in ("s1", "s2"):
        assert (tmp_path / run / "model.safetensors").is_file() and (
            tmp_path / run / "checkpoints" / "last.pt"
        ).is_file()
    # The weights moved: Stage I from its initialisation, Stage II only in the prior encoder.
    torch.manual_seed(3)  # the config's seed: the same initial weights train() starts from
    initial = CodeBrain(tiny_model_config()).state_dict()
    assert any(not torch.equal(initial[k], rank0["stage1"][k]) for k in initial)
    for name, weight in rank0["stage2"].items():
        if name.startswith("prior_encoder."):
            continue
        assert torch.equal(weight, rank0["stage1"][name]), f"Stage II moved frozen {name}"
    prior = [n for n in initial if n.startswith("prior_encoder.")]
    assert any(not torch.equal(rank0["stage1"][n], rank0["stage2"][n]) for n in prior)
