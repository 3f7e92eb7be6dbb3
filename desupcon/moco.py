"""MoCo-v3 self-supervised pretraining (SPEC §8): model, training loop, checkpoint evaluation.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021,
https://arxiv.org/abs/2104.02057; the model follows facebookresearch/moco-v3 ``moco/builder.py``.
A base encoder (backbone + projector) and a predictor learn from the symmetric loss against keys
of a momentum encoder (an exponential moving average of the base encoder), optionally with a FIFO
queue of past keys as extra negatives for small batches. ViT-Small/16 keeps its patch projection
frozen at its random initialisation, the paper's fix for training instability.
The YAML config of a run lives in ``desupcon.moco_config``.

    python -m desupcon pretrain configs/moco_v3_smoke.yaml --set train.epochs=5
    python -m desupcon evaluate-checkpoints configs/moco_v3_smoke.yaml --epochs 0 1 5

Artefacts: ``pth_models/moco_v3/<out_dir>/checkpoint_epoch{E:04d}.pth``,
``json_results/moco_v3/<out_dir>.json`` (per-epoch log), ``<out_dir>_checkpoint_eval.json`` beside
it and ``plots/<out_dir>_accuracy_vs_epoch.png``, under ``desupcon.runs.output_root()``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import VisionTransformer
from tqdm import tqdm

from . import distributed as dist
from .augment import PRESETS, augment, normalize
from .banks import FIFOQueue
from .config import ConfigError, config_diff
from .data import ImageDataset, load_dataset, load_splits
from .evaluate import embed, knn_accuracy, linear_probe
from .losses import moco_v3_loss
from .models import CifarResNet
from .moco_config import BACKBONES, MocoConfig, ModelConfig, load_config
from .runs import (CHECKPOINT_FORMAT, StaleRunError, atomic_save, atomic_write_json, describe_diff,
                   load_checkpoint, output_root)
from .train import NonFiniteLossError, _lr_factor, default_device

VIT_SMALL = dict(num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536)


# ---------------------------------------------------------------------------------------------
# Backbones and model
# ---------------------------------------------------------------------------------------------

def freeze_patch_projection(vit: nn.Module) -> list[str]:
    """Freeze the ViT patch projection (``conv_proj``) at its current weights; return the names frozen.

    Raises ``RuntimeError`` if the model has no ``conv_proj`` parameter, so a renamed layer
    never leaves the projection silently trainable.
    """
    frozen = [name for name, p in vit.named_parameters() if name.split(".")[0] == "conv_proj"]
    if not frozen:
        raise RuntimeError("ViT patch projection 'conv_proj' not found: cannot freeze it")
    vit.conv_proj.requires_grad_(False)
    print("✓ Froze ViT patch projection layer (conv_proj)")
    return frozen


def _backbone(cfg: ModelConfig, image_size: int, **vit_arch) -> tuple[nn.Module, int]:
    """The randomly initialised backbone and its feature dimension (patch projection still trainable)."""
    if cfg.backbone == "vit_small":
        arch = {**VIT_SMALL, **vit_arch}
        vit = VisionTransformer(image_size=image_size, patch_size=cfg.patch_size, **arch)
        vit.heads = nn.Identity()  # features = the CLS token
        return vit, arch["hidden_dim"]
    if cfg.backbone in ("resnet18", "resnet50"):
        resnet = CifarResNet(cfg.backbone, cfg.width)
        return resnet, resnet.feature_dim
    raise ValueError(f"unknown backbone '{cfg.backbone}': choose one of {list(BACKBONES)}")


def build_backbone(cfg: ModelConfig, image_size: int, **vit_arch) -> tuple[nn.Module, int]:
    """Backbone ``(module, feature_dim)`` with pooled features ``(B, feature_dim)``.

    Args:
        cfg: the ``model`` section (backbone, width, patch_size, stop_grad_conv1).
        image_size: input side (a multiple of the patch size for ViT).
        vit_arch: overrides of ``VIT_SMALL`` (num_layers, num_heads, hidden_dim, mlp_dim), e.g. a
            one-layer ViT in tests (default: ViT-Small).
    """
    backbone, dim = _backbone(cfg, image_size, **vit_arch)
    if cfg.backbone == "vit_small" and cfg.stop_grad_conv1:
        freeze_patch_projection(backbone)
    return backbone, dim


def _build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int) -> nn.Sequential:
    """Linear(no bias)-BN-ReLU repeated, the last Linear followed by BatchNorm1d(affine=False)."""
    layers = []
    for i in range(num_layers):
        dim1 = input_dim if i == 0 else mlp_dim
        dim2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        else:
            layers.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*layers)


class MoCoV3(nn.Module):
    """MoCo-v3: base encoder (backbone + projector), momentum encoder and predictor.

    https://arxiv.org/abs/2104.02057. ``forward(x1, x2, m)`` returns the symmetric loss
    ``moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1)``; under DDP the keys of all ranks are gathered.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_layers: int = 3, proj_hidden: int = 4096,
                 proj_dim: int = 256, pred_hidden: int = 4096, temperature: float = 0.2, queue_size: int = 0,
                 batch_size: int | None = None):
        """
        backbone: network mapping images to features (B, feature_dim).
        feature_dim: dimension of the backbone features.
        proj_layers: projector depth: 3 for ViT, 2 for ResNet (default: 3).
        proj_hidden: hidden dimension of the projector (default: 4096).
        proj_dim: output dimension of projector and predictor (default: 256).
        pred_hidden: hidden dimension of the 2-layer predictor (default: 4096).
        temperature: softmax temperature tau (default: 0.2).
        queue_size: keys of past batches used as extra negatives; 0 = none (default: 0).
        batch_size: keys enqueued per forward (the global batch), checked against queue_size
            now (default: None, checked at the first enqueue).
        """
        super().__init__()
        self.temperature = temperature
        self.base_encoder = nn.Sequential(OrderedDict(
            backbone=backbone, projector=_build_mlp(proj_layers, feature_dim, proj_hidden, proj_dim)))
        self.momentum_encoder = copy.deepcopy(self.base_encoder).requires_grad_(False)  # never gets gradient
        self.predictor = _build_mlp(2, proj_dim, pred_hidden, proj_dim)
        self.queue = FIFOQueue(queue_size, proj_dim, batch_size=batch_size) if queue_size else None

    @torch.no_grad()
    def _update_momentum_encoder(self, m: float):
        """theta_k <- m * theta_k + (1 - m) * theta_q for every parameter; buffers are copied."""
        params_k = list(self.momentum_encoder.parameters())
        torch._foreach_mul_(params_k, m)
        torch._foreach_add_(params_k, list(self.base_encoder.parameters()), alpha=1 - m)
        torch._foreach_copy_(list(self.momentum_encoder.buffers()), list(self.base_encoder.buffers()))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float | None = None) -> torch.Tensor:
        """
        x1, x2: the two views of the local batch (N, C, H, W).
        m: momentum of the key-encoder update made before computing the keys; None skips it
            (the later forwards of an accumulated step) (default: None).
        Returns the symmetric loss; the queue (if any) then receives the view-2 keys k2.
        """
        q1 = F.normalize(self.predictor(self.base_encoder(x1)), dim=1)  # (N, D)
        q2 = F.normalize(self.predictor(self.base_encoder(x2)), dim=1)  # (N, D)
        with torch.no_grad():
            if m is not None:
                self._update_momentum_encoder(m)
            k1 = dist.gather(F.normalize(self.momentum_encoder(x1), dim=1))  # (N * world, D)
            k2 = dist.gather(F.normalize(self.momentum_encoder(x2), dim=1))  # (N * world, D)
        queue = None if self.queue is None else self.queue.keys  # (K, D)
        rank = dist.rank()
        loss = (moco_v3_loss(q1, k2, self.temperature, rank, queue)
                + moco_v3_loss(q2, k1, self.temperature, rank, queue))
        if self.queue is not None:
            self.queue.enqueue(k2)
        return loss


def _assemble(cfg: MocoConfig, backbone: nn.Module, feature_dim: int) -> MoCoV3:
    """``MoCoV3`` around ``backbone`` with the heads and queue of ``cfg`` (ViT: 3-layer projector, ResNet: 2)."""
    return MoCoV3(backbone, feature_dim, proj_layers=3 if cfg.model.backbone == "vit_small" else 2,
                  proj_hidden=cfg.model.proj_hidden, proj_dim=cfg.model.proj_dim, pred_hidden=cfg.model.pred_hidden,
                  temperature=cfg.train.temperature, queue_size=cfg.train.queue_size, batch_size=cfg.train.batch_size)


def build_model(cfg: MocoConfig) -> MoCoV3:
    """The randomly initialised ``MoCoV3`` of a config."""
    return _assemble(cfg, *build_backbone(cfg.model, cfg.data.image_size))


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Images per process; ``ConfigError`` unless ``batch_size`` divides evenly over ``world_size``."""
    if batch_size % world_size:
        multiple = -(-batch_size // world_size) * world_size
        raise ConfigError(f"'train.batch_size' = {batch_size} is not divisible by the world size {world_size}: "
                          f"choose a multiple of {world_size} (e.g. {multiple})")
    return batch_size // world_size


def momentum_at(step: int, total_steps: int, m0: float, schedule: str) -> float:
    """Key-encoder momentum at optimiser step ``step``: ``m0`` ("fixed") or
    ``1 - (1 - m0) * (cos(pi * step / total_steps) + 1) / 2`` ("cosine", rising from m0 to 1)."""
    if schedule == "fixed":
        return m0
    return 1 - (1 - m0) * (math.cos(math.pi * step / total_steps) + 1) / 2


def estimate_vram_gb(cfg: MocoConfig) -> float:
    """Rough peak GPU memory of one process in GB: an estimate, not a measurement.

    fp32 weights, gradients and the two AdamW moments of the base encoder and predictor
    (16 bytes per parameter; the frozen ViT patch projection is counted too), the momentum encoder
    (4 bytes per parameter), the buffers (queue, BatchNorm statistics), and the activations kept for
    backward: the outputs of every leaf module of the base encoder for one image (2 bytes under amp,
    else 4) x 2 views x the per-process batch. Attention internals and allocator overhead are not
    counted. The model is built on the meta device: no memory is allocated.
    """
    size = cfg.data.image_size
    with torch.device("meta"):
        model = _assemble(cfg, *_backbone(cfg.model, size))
    count = lambda *modules: sum(p.numel() for module in modules for p in module.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    elements = []
    leaves = [module for module in model.base_encoder.modules() if not list(module.children())]
    hooks = [leaf.register_forward_hook(lambda _m, _x, out: elements.append(out.numel())) for leaf in leaves]
    model.base_encoder(torch.empty(2, 3, size, size, device="meta"))  # 2 images: BatchNorm needs a batch
    for hook in hooks:
        hook.remove()
    per_image = sum(elements) / 2 * (2 if cfg.train.amp else 4)
    batch = cfg.train.batch_size // dist.world_size()
    total = (16 * count(model.base_encoder, model.predictor) + 4 * count(model.momentum_encoder) + buffer_bytes
             + 2 * batch * per_image)
    return total / 1e9


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def checkpoint_dir(cfg: MocoConfig) -> Path:
    return output_root() / "pth_models" / "moco_v3" / cfg.train.out_dir


def checkpoint_file(cfg: MocoConfig, epoch: int) -> Path:
    return checkpoint_dir(cfg) / f"checkpoint_epoch{epoch:04d}.pth"


def log_file(cfg: MocoConfig, suffix: str = "") -> Path:
    return output_root() / "json_results" / "moco_v3" / f"{cfg.train.out_dir}{suffix}.json"


def saved_epochs(cfg: MocoConfig) -> list[int]:
    """Epochs with a checkpoint in the run's folder, ascending."""
    found = (re.fullmatch(r"checkpoint_epoch(\d+)\.pth", p.name) for p in checkpoint_dir(cfg).glob("*.pth"))
    return sorted(int(match[1]) for match in found if match)


def _load_matching(cfg: MocoConfig, epoch: int) -> dict:
    """The checkpoint of ``epoch``; ``StaleRunError`` naming the differing keys if its config differs."""
    path = checkpoint_file(cfg, epoch)
    ckpt = load_checkpoint(path)
    diff = config_diff(ckpt["config"], cfg.to_dict())
    if diff:
        raise StaleRunError(f"checkpoint {path} was trained with a different config ({describe_diff(diff)}); "
                            f"pass force_retrain=True (FORCE_RETRAIN) to retrain, or choose another train.out_dir")
    return ckpt


def _amp_dtype(cfg: MocoConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA when amp is on (fp16 where the GPU lacks bf16); None = full precision."""
    if not cfg.train.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class _Pretrainer:
    """Model, optimiser, schedules and random generators of one pretraining run."""

    def __init__(self, cfg: MocoConfig, data: ImageDataset, device: torch.device):
        t = cfg.train
        self.cfg, self.data, self.device = cfg, data, device
        self.per_rank = per_rank_batch(t.batch_size, dist.world_size())
        self.steps_per_epoch = len(data) // (t.batch_size * t.accum_steps)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"'train.batch_size' x 'train.accum_steps' = {t.batch_size * t.accum_steps} exceeds "
                              f"the {len(data)} training images of '{cfg.data.dataset}': lower one of them")
        self.total_steps = t.epochs * self.steps_per_epoch
        self.global_step = 0
        torch.manual_seed(t.seed)
        self.model = build_model(cfg).to(device)
        if dist.is_distributed() and device.type == "cuda":  # PyTorch's SyncBatchNorm runs on GPUs only
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # heads (and ResNet) as moco-v3
        self.forward = dist.wrap(self.model)
        self.lr = t.base_lr * t.batch_size * t.accum_steps / 256
        params = [p for p in self.model.parameters() if p.requires_grad]
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=t.weight_decay, **fast)
        warmup = t.warmup_epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _lr_factor(step, warmup, self.total_steps))
        self.amp_dtype = _amp_dtype(cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.order_gen = torch.Generator(device=device).manual_seed(t.seed)  # same order on every rank
        self.aug_gen = torch.Generator(device=device).manual_seed(t.seed + 1000003 * (dist.rank() + 1))

    def state_dict(self) -> dict:
        return {"encoder_q": self.model.base_encoder.backbone.state_dict(),
                "proj_q": self.model.base_encoder.projector.state_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "global_step": self.global_step,
                "rng": {"order": self.order_gen.get_state(), "aug": self.aug_gen.get_state(),
                        "torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.global_step = state["global_step"]
        self.order_gen.set_state(state["rng"]["order"])
        self.aug_gen.set_state(state["rng"]["aug"])
        torch.set_rng_state(state["rng"]["torch"])

    def _views(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, (view1, view2) = self.data.images[idx], PRESETS[self.cfg.data.augment]
        size, mean, std = self.cfg.data.image_size, self.data.mean, self.data.std
        return (augment(images, view1, mean, std, self.aug_gen, size),
                augment(images, view2, mean, std, self.aug_gen, size))

    def epoch(self, epoch: int, bar) -> dict:
        """Train one epoch; the loss stays on the device and is read once, at the end."""
        t, start = self.cfg.train, time.time()
        self.model.train()
        order = torch.randperm(len(self.data), generator=self.order_gen, device=self.device)
        losses = torch.zeros(self.steps_per_epoch, device=self.device)
        for step in range(self.steps_per_epoch):
            m = momentum_at(self.global_step, self.total_steps, t.momentum, t.momentum_schedule)
            for micro in range(t.accum_steps):
                first = ((step * t.accum_steps + micro) * t.batch_size) + dist.rank() * self.per_rank
                x1, x2 = self._views(order[first:first + self.per_rank])
                last = micro == t.accum_steps - 1
                no_sync = self.forward.no_sync() if dist.is_distributed() and not last else contextlib.nullcontext()
                with no_sync:
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        loss = self.forward(x1, x2, m if micro == 0 else None)
                    self.scaler.scale(loss / t.accum_steps).backward()
                losses[step] += loss.detach() / t.accum_steps
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.global_step += 1
            bar.update(1)
        loss = losses.mean().item()
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"MoCo-v3 run '{t.out_dir}': the loss became {loss} in epoch {epoch}; the last checkpoint in "
                f"{checkpoint_dir(self.cfg)} is kept; lower train.base_lr or raise train.warmup_epochs and "
                f"rerun (training resumes)")
        return {"epoch": epoch, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "momentum": m,
                "seconds": round(time.time() - start, 3)}


def _summary(cfg: MocoConfig, history: list, cached: bool) -> dict:
    return {"name": cfg.train.out_dir, "config": cfg.to_dict(), "cached": cached, "epochs": history,
            "final_loss": history[-1]["loss"], "checkpoint_dir": str(checkpoint_dir(cfg)),
            "checkpoints": [str(checkpoint_file(cfg, e)) for e in saved_epochs(cfg)], "log": str(log_file(cfg))}


def pretrain(cfg: MocoConfig, resume: bool = True, force_retrain: bool = False, device=None) -> dict:
    """Pretrain MoCo-v3 as ``cfg`` says, or reuse a finished run with the same config.

    Args:
        cfg: the run's config (see ``load_config``).
        resume: continue from the newest checkpoint in the run's folder when it is not the final
            one (default: True); False restarts from scratch.
        force_retrain: delete the run's checkpoints and train anew (default: False).
        device: training device (default: CUDA if available, else the CPU).

    A checkpoint trained with another config raises ``StaleRunError`` naming the differing keys.
    Returns ``{"name", "config", "cached", "epochs": per-epoch log, "final_loss", "checkpoint_dir",
    "checkpoints", "log"}``.
    """
    device = torch.device(device) if device else default_device()
    t = cfg.train
    done = [] if force_retrain else saved_epochs(cfg)
    if force_retrain and dist.is_main():
        for epoch in saved_epochs(cfg):
            checkpoint_file(cfg, epoch).unlink()
    ckpt = _load_matching(cfg, done[-1]) if done else None
    if ckpt is not None and ckpt["epoch"] == t.epochs:
        if dist.is_main():
            print(f"[cache] MoCo-v3 '{t.out_dir}': {t.epochs} epochs already trained ({checkpoint_file(cfg, t.epochs)})")
        return _summary(cfg, ckpt["history"], cached=True)
    with dist.main_first():  # rank 0 downloads, the others then read
        data = load_dataset(cfg.data.dataset, train=True).to(device)
    trainer = _Pretrainer(cfg, data, device)
    history = []
    if ckpt is not None and resume:
        trainer.load_state_dict(ckpt)
        history = ckpt["history"]
        print(f"[resume] MoCo-v3 '{t.out_dir}': from epoch {ckpt['epoch']} of {t.epochs}")
    if dist.is_main():
        print(f"MoCo-v3 '{t.out_dir}': {cfg.model.backbone} on {cfg.data.dataset} at {cfg.data.image_size}px, "
              f"lr = {t.base_lr} x {t.batch_size * t.accum_steps}/256 = {trainer.lr:.3g}, "
              f"{trainer.steps_per_epoch} steps/epoch, amp {trainer.amp_dtype or 'off'}")
        print(f"VRAM estimate (an estimate, not a measurement): {estimate_vram_gb(cfg):.2f} GB per process")
    bar = tqdm(total=trainer.total_steps, initial=len(history) * trainer.steps_per_epoch, desc=t.out_dir,
               disable=not dist.is_main(), mininterval=1.0)
    for epoch in range(len(history) + 1, t.epochs + 1):
        history.append(trainer.epoch(epoch, bar))
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if dist.is_main():
            if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
                atomic_save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": epoch,
                             "history": history, **trainer.state_dict()}, checkpoint_file(cfg, epoch))
            atomic_write_json({"name": t.out_dir, "config": cfg.to_dict(), "epochs": history}, log_file(cfg))
    bar.close()
    return _summary(cfg, history, cached=False)


def pretrain_from_yaml(path, overrides=()) -> dict:
    """``python -m desupcon pretrain CONFIG --set section.key=value ...`` (works under torchrun)."""
    dist.init_from_env()
    summary = pretrain(load_config(path, overrides))
    if dist.is_main():
        print(f"[done] {summary['name']}: final loss {summary['final_loss']:.4f} | checkpoints "
              f"{summary['checkpoint_dir']} | log {summary['log']}")
    return summary


# ---------------------------------------------------------------------------------------------
# Evaluation of saved checkpoints
# ---------------------------------------------------------------------------------------------

def load_encoder(cfg: MocoConfig, epoch: int, device="cpu") -> nn.Module:
    """The base backbone (``encoder_q``) saved at ``epoch``, in eval mode; epoch 0 = its random init.

    The random init is the one ``pretrain`` starts from (same seed); the global RNG is left as it was.
    A missing checkpoint raises ``FileNotFoundError`` naming it and the epochs available.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        backbone, _ = _backbone(cfg.model, cfg.data.image_size)
    if epoch:
        if not checkpoint_file(cfg, epoch).exists():
            raise FileNotFoundError(f"no checkpoint {checkpoint_file(cfg, epoch)}; available epochs: "
                                    f"{saved_epochs(cfg)} (0 = random init); pretrain first or choose among them")
        backbone.load_state_dict(_load_matching(cfg, epoch)["encoder_q"])
    return backbone.to(device).eval()


def extract_features(encoder: nn.Module, data: ImageDataset, image_size: int) -> torch.Tensor:
    """Frozen features (N, F) of unaugmented, normalised images resized to ``image_size``."""
    def transform(batch):
        x = normalize(batch, data.mean, data.std)  # (B, C, H, W)
        if x.shape[-1] == image_size:
            return x
        return F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)

    feats, = embed(encoder, data.images, data.mean, data.std, transform=transform)
    return feats


def evaluate_checkpoints(config_path, epochs, overrides=(), k: int = 200, temperature: float = 0.1,
                         device=None) -> list[dict]:
    """Weighted k-NN and linear probe (top-1/top-5) of the backbone saved at each of ``epochs``.

    Args:
        config_path: the YAML config the checkpoints were trained with.
        epochs: checkpoint epochs to evaluate; 0 = the random initialisation.
        overrides: ``"section.key=value"`` overrides, as given to ``pretrain`` (default: none).
        k, temperature: neighbours and temperature of the cosine k-NN (default: 200, 0.1).
        device: evaluation device (default: CUDA if available, else the CPU).

    Writes ``json_results/moco_v3/<out_dir>_checkpoint_eval.json`` and
    ``plots/<out_dir>_accuracy_vs_epoch.png``; returns the points, one dict per epoch.
    """
    from .plots import plot_accuracy_vs_epoch

    cfg = load_config(config_path, overrides)
    device = torch.device(device) if device else default_device()
    train, test = load_splits(cfg.data.dataset, device)
    points = []
    for epoch in sorted(set(epochs)):
        encoder = load_encoder(cfg, epoch, device)
        f_train, f_test = (extract_features(encoder, split, cfg.data.image_size) for split in (train, test))
        knn = knn_accuracy(f_train, train.labels, f_test, test.labels, test.num_classes, k=k, temperature=temperature)
        probe = linear_probe(f_train, train.labels, f_test, test.labels, test.num_classes, seed=cfg.train.seed)
        points.append({"epoch": epoch, "knn_top1": knn["top1"], "knn_top5": knn["top5"], "linear_top1": probe["top1"],
                       "linear_top5": probe["top5"], "linear_train_top1": probe["train_top1"]})
        print(f"epoch {epoch:4d}: k-NN top-1 {knn['top1']:.2f}% | linear top-1 {probe['top1']:.2f}%, "
              f"top-5 {probe['top5']:.2f}%")
    name = cfg.train.out_dir
    atomic_write_json({"name": name, "config": cfg.to_dict(), "knn_k": k, "knn_temperature": temperature,
                       "points": points}, log_file(cfg, "_checkpoint_eval"))
    plot_accuracy_vs_epoch(points, output_root() / "plots" / f"{name}_accuracy_vs_epoch.png",
                           title=f"MoCo-v3 {name}: frozen-feature accuracy")
    return points
