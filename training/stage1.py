"""Stage I: learn the code of the complete set and the decoder (also trains the direct-regression baseline).

Each step draws an availability pattern, uniform over the 2^N − 2 non-empty, non-full subsets: one for the whole
batch (``mask_per = "batch"``, as the authors; every rank the same) or one per sample. The network reconstructs
every contrast; the loss follows the paper and the authors' code:

    L = λ_missing · L_psnr(missing) + λ_available · L_psnr(available) [+ w_gan · L_G from gan_start_step]
    L_psnr = mean over the selected contrasts c of 10·log10(MSE_c), MSE_c pooled over the batch's samples
             (where c is selected) and pixels  (= −PSNR for data range 1)

The LSGAN discriminator trains from the first step; it sees [set, complete real set] (the authors condition it on
the complete real set): the real set, or the composed set (available contrasts copied, missing ones taken from the
reconstruction). Its per-contrast target is the availability mask (``codebrain_node.model.discriminator``). The
direct-regression baseline (``arch = "direct"``) runs the same step with its own network: same data, masks, λ
weights and optimiser, so the evaluation compares like with like. With intensity augmentation on, the network
reads ``batch["input"]`` and every loss compares with the un-augmented ``batch["image"]``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from codebrain_node.model import (
    CodeBrain,
    DirectRegression,
    PatchDiscriminator,
    discriminator_loss,
    generator_adversarial_loss,
)
from training.loop import (
    Distributed,
    autocast,
    clip_and_step,
    make_adamw,
    make_constant_schedule,
    make_cosine_schedule,
    wrap_ddp,
)
from training.train_config import TrainConfig

PSNR_EPS = 1e-8


def random_availability(
    batch: int, num_contrasts: int, generator: torch.Generator, *, per_batch: bool = False
) -> Tensor:
    """bool ``[B, N]``: uniformly drawn non-empty, non-full subsets of the contrasts, one per row (or one for all
    rows when ``per_batch``)."""
    codes = torch.randint(1, 2**num_contrasts - 1, (1 if per_batch else batch,), generator=generator)
    bits = torch.arange(num_contrasts)
    return ((codes.unsqueeze(1) >> bits) & 1 == 1).expand(batch, num_contrasts).contiguous()


def pattern_generator(seed: int, step: int) -> torch.Generator:
    """The batch's pattern depends on (seed, step) only, so every rank of a DDP run draws the same one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 17)


def draw_availability(images: Tensor, cfg: TrainConfig, step: int, generator: torch.Generator) -> Tensor:
    """This step's availability masks ``[B, N]`` on the images' device, per batch or per sample as configured."""
    batch, n = images.shape[:2]
    if cfg.mask_per == "batch":
        return random_availability(batch, n, pattern_generator(cfg.seed, step), per_batch=True).to(images.device)
    return random_availability(batch, n, generator).to(images.device)


def masked_psnr_loss(prediction: Tensor, target: Tensor, selected: Tensor) -> Tensor:
    """Mean over contrasts of 10·log10(MSE_c), MSE_c pooled over the samples where ``selected[:, c]`` (bool
    ``[B, N]``) and their pixels: the authors' aggregation (one log per contrast, not one per sample)."""
    squared = (prediction.float() - target.float()).pow(2).mean(dim=(-2, -1))  # [B, N]
    weights = selected.to(squared.dtype)
    counts = weights.sum(dim=0)  # [N]
    used = counts > 0
    if not bool(used.any()):
        return prediction.sum() * 0.0
    mse = (squared * weights).sum(dim=0)[used] / counts[used]
    return (10.0 / math.log(10.0)) * torch.log(mse + PSNR_EPS).mean()


def reconstruction(output: Tensor | dict[str, Tensor]) -> Tensor:
    """CodeBrain's forward returns a dict, DirectRegression's a tensor; both mean 'every contrast'."""
    return output["recon"] if isinstance(output, dict) else output


@contextmanager
def frozen(module: nn.Module):
    """Let gradients flow *through* a module without giving its parameters any (the generator's GAN term)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


class Stage1Task:
    """One optimiser for the generator (posterior encoder, E_c, decoder — or the direct net), one for D."""

    name = "stage1"

    def __init__(self, model: CodeBrain | DirectRegression, cfg: TrainConfig, dist: Distributed) -> None:
        self.cfg, self.dist = cfg, dist
        self.model = model.to(dist.device).train()
        if isinstance(model, CodeBrain):
            model.prior_encoder.requires_grad_(False)  # trained in Stage II; DDP must not wait for its gradients
            parameters = model.stage1_parameters()
            self.name = "stage1"
        else:
            parameters = list(model.parameters())
            self.name = "direct"
        self.net = wrap_ddp(self.model, dist)
        self.optimizers = {"generator": make_adamw(parameters, cfg, cfg.lr)}
        self.schedulers = {"generator": make_cosine_schedule(self.optimizers["generator"], cfg, cfg.steps)}
        self.discriminator: PatchDiscriminator | None = None
        if cfg.gan_weight > 0 and cfg.gan_start_step < cfg.steps:
            n = model.cfg.num_contrasts
            self.discriminator = PatchDiscriminator(n, n, dim=model.cfg.discriminator_dim).to(dist.device).train()
            self.discriminator_net = wrap_ddp(self.discriminator, dist)
            optimizer = make_adamw(
                list(self.discriminator.parameters()), cfg, cfg.discriminator_lr, cfg.discriminator_betas
            )
            self.optimizers["discriminator"] = optimizer
            self.schedulers["discriminator"] = (
                make_constant_schedule(optimizer)
                if cfg.discriminator_schedule == "constant"
                else make_cosine_schedule(optimizer, cfg, cfg.steps)
            )

    @property
    def modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"model": self.model}
        if self.discriminator is not None:
            modules["discriminator"] = self.discriminator
        return modules

    def inference_model(self) -> nn.Module:
        return self.model

    def train_step(self, batch: dict[str, Tensor], step: int, generator: torch.Generator) -> dict[str, float]:
        images = batch["image"]
        available = draw_availability(images, self.cfg, step, generator)
        gan_active = self.discriminator is not None and step >= self.cfg.gan_start_step

        with autocast(self.dist):
            recon = reconstruction(self.net(batch.get("input", images), available)).float()
        loss_missing = masked_psnr_loss(recon, images, ~available)
        loss_available = masked_psnr_loss(recon, images, available)
        loss = self.cfg.lambda_missing * loss_missing + self.cfg.lambda_available * loss_available
        metrics = {"loss_missing": loss_missing.item(), "loss_available": loss_available.item()}

        condition = images  # the complete real set, as the authors condition their discriminator
        composed = torch.where(available.view(*available.shape, 1, 1), images, recon)
        if gan_active:
            with frozen(self.discriminator) as critic, autocast(self.dist):
                adversarial = generator_adversarial_loss(critic(composed, condition))
            loss = loss + self.cfg.gan_weight * adversarial
            metrics["loss_gan_generator"] = adversarial.item()

        optimizer = self.optimizers["generator"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = clip_and_step(optimizer, self.schedulers["generator"], self.cfg.grad_clip)
        metrics["loss"] = loss.item()

        if self.discriminator is not None:  # from the first step, so D is a critic by the time the G term joins
            metrics["loss_discriminator"] = self._discriminator_step(images, composed.detach(), condition, available)
        return metrics

    def _discriminator_step(self, real: Tensor, composed: Tensor, condition: Tensor, available: Tensor) -> float:
        """One forward on [real; composed] (one DDP forward per backward), LSGAN loss, one AdamW step."""
        with autocast(self.dist):
            scores = self.discriminator_net(torch.cat([real, composed]), torch.cat([condition, condition]))
        real_scores, fake_scores = scores.float().chunk(2)
        loss = discriminator_loss(real_scores, fake_scores, available)
        optimizer = self.optimizers["discriminator"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(optimizer, self.schedulers["discriminator"], self.cfg.grad_clip)
        return loss.item()

    def validate(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, float]:
        """Reconstruction figures on fixed random patterns; eval mode, raw (un-wrapped) model."""
        images = batch["image"]
        available = random_availability(images.shape[0], images.shape[1], generator).to(images.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with autocast(self.dist):
                recon = reconstruction(self.model.stage1_forward(images, available)["recon"]).float()
        finally:
            self.model.train(was_training)
        loss_missing = masked_psnr_loss(recon.clamp(0, 1), images, ~available)
        loss_available = masked_psnr_loss(recon.clamp(0, 1), images, available)
        loss = self.cfg.lambda_missing * loss_missing + self.cfg.lambda_available * loss_available
        return {
            "loss": loss.item(),
            "psnr_missing": -loss_missing.item(),
            "psnr_available": -loss_available.item(),
        }
