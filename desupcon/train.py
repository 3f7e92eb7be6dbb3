"""The training engine: teacher, teacher projection head and every student method.

``train(cfg)`` trains each seed of ``cfg`` (or loads it from the run cache), evaluates it (linear
probe, k-NN, alignment/uniformity), writes its plots and returns a summary with mean and std over
seeds. One step: two views made on the device from the uint8 dataset, bf16 autocast and
channels_last on CUDA, the frozen teacher without autograd, losses accumulated on the device and
read back once per epoch. Every epoch ends with an atomic checkpoint (model, optimiser,
scheduler, bank, RNG states, log), from which a killed run resumes exactly.

Under ``torchrun`` (DDP) ``cfg.batch_size`` stays the global batch: each rank trains on its
``batch_size // world_size`` images of a permutation shared by all ranks, with its own augmentation
stream; contrastive keys are gathered across ranks and the student's BatchNorm is synchronised
(on GPUs), so a step equals one process on the whole batch. Rank 0 logs, evaluates and saves.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed as dist
from .augment import PRESETS, augment
from .banks import MomentumMemoryBank
from .config import CONTRASTIVE_METHODS, RunConfig, validate
from .data import ImageDataset, load_splits
from .evaluate import embed, knn_accuracy, linear_probe, topk_accuracy
from .losses import crd_loss, hybrid_loss, kd_loss, lw_supcrd_loss, supcon_loss
from .models import ModelWrapper, build_model, fold_batchnorm
from .runs import CHECKPOINT_FORMAT, atomic_save, atomic_write_json, cached_checkpoint, checkpoint_path, log_path

NAN_CAUSES = ("usual causes: a temperature that is too low (tau < 0.05 with large alpha saturates the "
              "exponentials), a learning rate that is too high, or a stale memory bank (lower bank_momentum "
              "or bank_k); lower one and rerun: training resumes from the last good checkpoint")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Data:
    """Train and test splits on the training device."""

    train: ImageDataset
    test: ImageDataset

    @classmethod
    def load(cls, name: str, device) -> "Data":
        return cls(*load_splits(name, device))


def train(cfg: RunConfig, force_retrain: bool = False, data: Data | None = None, device=None,
          plots: bool = True) -> dict:
    """Train (or load from cache) every seed of ``cfg`` and return its summary.

    The teacher a run builds on is trained first if it is not cached. ``force_retrain`` retrains
    this run's seeds (not its teacher). The summary: ``{"name", "config", "seeds", "runs": [per-seed
    results], "mean": {...}, "std": {...}, "checkpoints", "logs"}``.
    """
    from .results import record, summarize

    validate(cfg)
    device = torch.device(device) if device else default_device()
    with dist.main_first():  # rank 0 downloads a missing dataset before the other ranks read it
        data = data or Data.load(cfg.dataset, device)
    validate(cfg, num_train=len(data.train), world_size=dist.world_size())
    teacher_model = None
    if cfg.teacher is not None:
        train(cfg.teacher, data=data, device=device, plots=plots)
        teacher_model = load_model(cfg.teacher, device=device)
    runs = [_train_seed(cfg.for_seed(seed), cfg.run_name(seed), data, device, force_retrain, teacher_model,
                        plots and seed == cfg.seeds[0]) for seed in cfg.seeds]
    summary = summarize(cfg, runs)
    if dist.is_main():
        record(summary)
    return summary


def load_model(cfg: RunConfig, seed: int | None = None, device="cpu") -> ModelWrapper:
    """The trained network of a finished run (eval mode), from its checkpoint."""
    seed = cfg.seeds[0] if seed is None else seed
    ckpt = cached_checkpoint(cfg.for_seed(seed), cfg.run_name(seed))
    if ckpt is None or not ckpt["complete"]:
        raise FileNotFoundError(f"run {cfg.run_name(seed)} is not trained yet ({checkpoint_path(cfg.run_name(seed))}); "
                                f"train it first with desupcon.train.train(cfg)")
    model = build_model(cfg, ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


class Trainer:
    """State and step of one single-seed run.

    Args:
        cfg: the run's single-seed config.
        data: train/test splits on ``device``.
        device: training device.
        teacher: the trained teacher (with projection head) for runs that use one, else None.
        fast: bf16 autocast + channels_last (default: on CUDA only); the maths is the same in fp32.

    Under DDP the student (and the adapting teacher head) are wrapped in ``DistributedDataParallel``
    and, on GPUs, the student's BatchNorm layers become ``SyncBatchNorm``.
    """

    def __init__(self, cfg: RunConfig, data: Data, device, teacher: ModelWrapper | None, fast: bool | None = None):
        self.cfg, self.data, self.device = cfg, data, torch.device(device)
        self.fast = self.device.type == "cuda" if fast is None else fast
        seed = cfg.seeds[0]
        torch.manual_seed(seed)
        torch.backends.cudnn.benchmark = True
        self.order_gen = torch.Generator(device=device).manual_seed(seed)  # same on every rank
        self.aug_gen = torch.Generator(device=device).manual_seed(seed + 1000003 * (dist.rank() + 1))
        self.model = build_model(cfg, data.train.num_classes).to(device)
        if dist.is_distributed() and self.device.type == "cuda":
            # batch statistics over all ranks' images, as one process on the whole batch would have;
            # PyTorch's SyncBatchNorm runs on GPUs only, so CPU ranks normalise their own images
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.teacher = self.teacher_head = None
        if cfg.role == "projection":  # the teacher's backbone and classifier, frozen; the head learns
            self.model.load_state_dict(teacher.state_dict())
            self.model.backbone.requires_grad_(False)
            self.model.classifier.requires_grad_(False)
        elif teacher is not None:  # frozen teacher backbone (eval mode); its projection head adapts
            self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
            fold_batchnorm(self.teacher.backbone)  # the same function, one pass fewer per layer
            if self.fast:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
            self.teacher.head.requires_grad_(cfg.method != "kd")
            if cfg.method != "kd":  # under DDP its gradients are averaged over ranks like the student's
                self.teacher_head = dist.wrap(self.teacher.head)
        if cfg.method not in CONTRASTIVE_METHODS:  # cross-entropy runs never use the projection head
            self.model.head.requires_grad_(False)
        if self.fast:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.bank = None
        if cfg.bank_k:
            self.bank = MomentumMemoryBank(len(data.train), cfg.proj_dim, momentum=cfg.bank_momentum,
                                           device=device)
            self._fill_bank()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.teacher is not None:
            params += [p for p in self.teacher.head.parameters() if p.requires_grad]
        self.optimizer = _optimizer(cfg, params, self.device)
        self.steps_per_epoch = len(data.train) // cfg.batch_size  # cfg.batch_size: the global batch
        total, warmup = cfg.epochs * self.steps_per_epoch, cfg.warmup_epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _lr_factor(s, warmup, total))
        self.ddp = dist.wrap(self.model)
        self.forward = torch.compile(self.ddp) if cfg.compile and self.device.type == "cuda" else self.ddp

    @torch.no_grad()
    def _fill_bank(self):
        """Start the bank from the teacher's embeddings of the unaugmented training images."""
        _, z, _ = embed(self.teacher, self.data.train.images, self.data.train.mean, self.data.train.std)
        self.bank.update(torch.arange(len(self.data.train), device=self.device), z, self.data.train.labels)
        dist.broadcast_(self.bank.feats)  # rank 0's: GPU kernels may round differently on each rank

    def state_dict(self) -> dict:
        """Everything a resume needs; under DDP every rank calls it (it gathers each rank's augmentation RNG)."""
        aug = dist.gather(self.aug_gen.get_state().to(self.device)).view(dist.world_size(), -1).cpu()  # (W, S)
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 "rng": {"order": self.order_gen.get_state(), "aug": aug, "torch": torch.get_rng_state()}}
        if self.teacher is not None:
            state["teacher_head"] = self.teacher.head.state_dict()
        if self.bank is not None:
            state["bank"] = self.bank.state_dict()
        return state

    def load_state_dict(self, state: dict):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order_gen.set_state(state["rng"]["order"])
        aug = state["rng"]["aug"]  # (world size that saved it, S): one augmentation stream per rank
        if len(aug) == dist.world_size():
            self.aug_gen.set_state(aug[dist.rank()].clone())  # its own storage: a row view segfaults
        elif dist.is_main():
            print(f"[resume] saved by {len(aug)} processes, resumed by {dist.world_size()}: augmentations restart "
                  f"from their seeds (data order, model, optimiser and bank resume exactly)")
        torch.set_rng_state(state["rng"]["torch"])
        if self.teacher is not None:
            self.teacher.head.load_state_dict(state["teacher_head"])
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])

    def _views(self, idx):
        images = self.data.train.images[idx]
        cfg1, cfg2 = PRESETS[self.cfg.augment]
        mean, std = self.data.train.mean, self.data.train.std
        x1, x2 = (augment(images, c, mean, std, self.aug_gen) for c in (cfg1, cfg2))
        if self.fast:
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        return x1, x2

    def _supcon(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """SupCon over both views of every rank's images: ``z`` (2B, P) = [view 1; view 2], ``y`` (B,).

        Under DDP every rank computes the same whole-batch loss; the gather's backward sums the W
        ranks' gradients of each image and DDP's average divides them by W again.
        """
        b = y.shape[0]
        z_all = torch.cat([dist.gather_local_first(z[:b]), dist.gather_local_first(z[b:])])  # (2BW, P)
        y_all = dist.gather_local_first(y)  # (BW,)
        return supcon_loss(z_all, torch.cat([y_all, y_all]), self.cfg.temperature)

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one step on this rank's images ``idx`` and the logits used for train accuracy.

        Under DDP the student anchors stay local and the contrast sets (both views of every rank
        for SupCon; the teacher keys and labels for CRD and LW-SupCRD) are gathered with gradient,
        local rows first; the memory bank draws and updates identically on every rank.
        """
        cfg, y = self.cfg, self.data.train.labels[idx]
        x1, x2 = self._views(idx)
        b = y.shape[0]
        two_view = cfg.role == "projection" or cfg.method in ("supcon", "hybrid")
        feats, z, logits = self.forward(torch.cat([x1, x2]) if two_view else x1)
        if cfg.role == "teacher" or cfg.method == "undistilled":
            return F.cross_entropy(logits, y), logits
        if cfg.role == "projection":
            return self._supcon(z, y), logits[:b]
        # contrastive students learn only from their loss; the classifier reads detached features
        logits = self.model.classifier(feats[:b].detach()) if cfg.method != "kd" else logits
        probe_ce = F.cross_entropy(logits, y)
        if cfg.method == "supcon":
            return self._supcon(z, y) + probe_ce, logits
        with torch.no_grad():
            t_feats = self.teacher.backbone(torch.cat([x1, x2]) if cfg.method != "kd" else x1)
            t_logits = self.teacher.classifier(t_feats[:b])
        if cfg.method == "kd":
            return (1 - cfg.kd_weight) * probe_ce + cfg.kd_weight * kd_loss(logits, t_logits, cfg.kd_temperature), logits
        keys = F.normalize(self.teacher_head(t_feats[b:]), dim=1)  # (B, P) the teacher head adapts (CRD-style)
        labels_t = dist.gather_local_first(y)  # (BW,)
        keys_all = dist.gather_local_first(keys)  # (BW, P): key i is the positive of local anchor i
        if self.bank is not None:
            batch = dist.gather(idx)  # (BW,) the whole step's images, the same on every rank
            with torch.no_grad():  # the shared order_gen draws the same slots on every rank
                bank_z, bank_y, _ = self.bank.sample(cfg.bank_k, exclude=batch, generator=self.order_gen)
            keys_all, labels_t = torch.cat([keys_all, bank_z]), torch.cat([labels_t, bank_y])
            self.bank.update(batch, dist.gather(keys.detach().float()), dist.gather(y))
        if cfg.method == "crd":
            return crd_loss(z[:b], keys_all, cfg.temperature) + probe_ce, logits
        lw = lw_supcrd_loss(z[:b], y, keys_all, labels_t, t_logits.float().softmax(dim=1), alpha=cfg.alpha,
                            beta=cfg.beta, temperature=cfg.temperature, adaptive_beta=cfg.adaptive_beta,
                            in_batch_keys=None if cfg.bank_positives else b * dist.world_size())
        if cfg.method == "hybrid":
            lw = hybrid_loss(self._supcon(z, y), lw, cfg.hybrid_lambda)
        return lw + probe_ce, logits

    def step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on the images ``idx``; returns the detached loss and logits (no sync)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.fast):
            loss, logits = self.loss(idx)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach()

    def epoch(self, epoch: int, run_name: str, bar) -> dict:
        """One epoch; returns its log entry over all ranks. Losses stay on the device until the end of the epoch.

        Each step takes the next ``cfg.batch_size`` images of a permutation shared by all ranks; rank r
        trains on its slice ``[r * per_rank, (r + 1) * per_rank)`` of them.
        """
        cfg, start = self.cfg, time.time()
        self.model.train()
        order = torch.randperm(len(self.data.train), generator=self.order_gen, device=self.device)
        per_rank = cfg.batch_size // dist.world_size()
        losses = torch.zeros(self.steps_per_epoch, device=self.device)
        correct = torch.zeros((), device=self.device)
        check_every = 1 if self.device.type == "cpu" else 50  # a host check is free on the CPU
        for step in range(self.steps_per_epoch):
            base = step * cfg.batch_size + dist.rank() * per_rank
            idx = order[base:base + per_rank]
            loss, logits = self.step(idx)
            losses[step] = loss
            correct += (logits.argmax(dim=1) == self.data.train.labels[idx]).sum()
            if (step + 1) % check_every == 0 or step + 1 == self.steps_per_epoch:
                _check_finite(losses[:step + 1], epoch, run_name)
            bar.update(1)
        losses = dist.sum_over_ranks(losses) / dist.world_size()  # the mean of the ranks' losses
        correct, seen = dist.sum_over_ranks(correct), self.steps_per_epoch * cfg.batch_size
        return {"epoch": epoch + 1, "loss": losses.mean().item(), "train_acc": 100.0 * correct.item() / seen,
                "lr": self.scheduler.get_last_lr()[0], "seconds": round(time.time() - start, 3)}


def _check_finite(losses: torch.Tensor, epoch: int, run_name: str):
    finite = torch.isfinite(losses)
    if bool(finite.all()):
        return
    bad = int((~finite).nonzero()[0])
    last = f"{losses[bad - 1].item():.4f} at step {bad}" if bad > 0 else "none in this epoch"
    raise NonFiniteLossError(
        f"{run_name}: the loss became {losses[bad].item()} at epoch {epoch + 1}, step {bad + 1} (last finite loss "
        f"{last}); training stopped and the last good checkpoint {checkpoint_path(run_name)} is kept; {NAN_CAUSES}")


def _optimizer(cfg: RunConfig, params, device) -> torch.optim.Optimizer:
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay,
                               nesterov=True, **fast)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine annealing to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train_seed(cfg: RunConfig, run_name: str, data: Data, device, force_retrain: bool,
                teacher: ModelWrapper | None, make_plots: bool) -> dict:
    ckpt = cached_checkpoint(cfg, run_name, force_retrain)
    path = checkpoint_path(run_name)
    if ckpt is not None and ckpt["complete"]:
        if dist.is_main():
            print(f"[cache] {run_name}: loaded {path}")
        return ckpt["results"]
    trainer = Trainer(cfg, data, device, teacher)
    history = []
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        history = ckpt["history"]
        if dist.is_main():
            print(f"[resume] {run_name}: from epoch {ckpt['epoch']} of {cfg.epochs} ({path})")
    bar = tqdm(total=cfg.epochs * trainer.steps_per_epoch, initial=len(history) * trainer.steps_per_epoch,
               desc=run_name, disable=not dist.is_main(), mininterval=1.0)
    for epoch in range(len(history), cfg.epochs):
        history.append(trainer.epoch(epoch, run_name, bar))
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['train_acc']:.1f}")
        _save(cfg, run_name, trainer, history, complete=False, num_classes=data.train.num_classes)
    bar.close()
    results = evaluate_run(cfg, trainer.model, data, run_name, history, make_plots) if dist.is_main() else None
    _save(cfg, run_name, trainer, history, complete=True, num_classes=data.train.num_classes, results=results)
    results = dist.broadcast_object(results)  # the other ranks wait here for rank 0's evaluation and checkpoint
    if dist.is_main():
        print(f"[done] {run_name}: test acc {results['test_acc']:.2f}% | checkpoint {path} | log {log_path(run_name)}")
    return results


def _save(cfg, run_name, trainer, history, complete, num_classes, results=None):
    """Checkpoint and JSON log of the run, written by rank 0 (every rank calls it: see ``Trainer.state_dict``)."""
    trainer_state = trainer.state_dict()
    if not dist.is_main():
        return
    state = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "run_name": run_name, "complete": complete,
             "epoch": len(history), "history": history, "num_classes": num_classes, **trainer_state}
    if results is not None:
        state["results"] = results
    atomic_save(state, checkpoint_path(run_name))
    atomic_write_json({"run_name": run_name, "config": cfg.to_dict(), "complete": complete, "epochs": history,
                       "results": results}, log_path(run_name))


def evaluate_run(cfg: RunConfig, model: ModelWrapper, data: Data, run_name: str, history: list,
                 make_plots: bool) -> dict:
    """Linear probe and k-NN on frozen features, head accuracy, representation metrics and plots.

    ``test_acc`` is the number a run reports: the linear probe for students, the classifier head for
    the teacher and its projection run.
    """
    from .metrics import representation_metrics, uniformity

    train, test = data.train, data.test
    f_tr, _, _ = embed(model, train.images, train.mean, train.std)
    f_te, z_te, logits_te = embed(model, test.images, test.mean, test.std)
    probe = linear_probe(f_tr, train.labels, f_te, test.labels, test.num_classes, epochs=cfg.probe_epochs,
                         seed=cfg.seeds[0])
    knn = knn_accuracy(f_tr, train.labels, f_te, test.labels, test.num_classes, k=cfg.knn_k)
    head_top1, head_top5 = topk_accuracy(logits_te, test.labels)
    gen = torch.Generator(device=test.images.device).manual_seed(cfg.seeds[0])
    cfg1, cfg2 = PRESETS["supcon"]
    view = lambda c: lambda batch: augment(batch, c, test.mean, test.std, gen)
    _, z1, _ = embed(model, test.images, test.mean, test.std, transform=view(cfg1))
    _, z2, _ = embed(model, test.images, test.mean, test.std, transform=view(cfg2))
    reported = probe["top1"] if cfg.role == "student" else head_top1
    train_acc = probe["train_top1"] if cfg.role == "student" else history[-1]["train_acc"]
    results = {"test_acc": reported, "train_acc": train_acc, "gap": train_acc - reported,
               "probe_top1": probe["top1"], "probe_top5": probe["top5"], "probe_train_top1": probe["train_top1"],
               "knn_top1": knn["top1"], "head_top1": head_top1, "head_top5": head_top5,
               **representation_metrics(z1, z2, test.labels), "uniformity_clean": uniformity(z_te).item(),
               "train_seconds": sum(h["seconds"] for h in history)}
    if make_plots:
        from . import plots
        from .runs import plots_dir

        out = plots_dir()
        plots.plot_tsne(f_te, test.labels, out / f"tsne_{run_name}.png", title=run_name)
        plots.plot_hypersphere(z_te, test.labels, out / f"{run_name}_hypersphere.html", title=run_name)
        plots.plot_alignment(z1, z2, test.labels, out / f"{run_name}_alignment.png", title=run_name)
        plots.plot_training_curves({run_name: history}, out / f"{run_name}_curves.png")
    return results
