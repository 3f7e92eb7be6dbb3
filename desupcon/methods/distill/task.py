"""The distillation task: what teacher, projection-head and student runs add to the trainer core.

The step of every method is the same: two views made on the device from the uint8 dataset, the
student forward on one or both (``registry.Method.two_views``), the frozen teacher without
autograd (logits on view 1, keys of its adapting projection head on view 2), then the method's loss
from ``StepOutputs``. Contrastive students also train their classifier on detached features, as
the write-ups do, so the head accuracy is available beside the linear probe.

Under ``torchrun`` (DDP) ``cfg.batch_size`` stays the global batch; contrastive keys are gathered
across ranks with gradient, local rows first, and the student's BatchNorm is synchronised (on
GPUs), so a step equals one process on the whole batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from desupcon.core import distributed as dist
from desupcon.core.paths import checkpoint_path
from desupcon.images.augment import PRESETS, augment
from desupcon.engine.evaluate import embed
from desupcon.engine.memory import announce_line
from desupcon.engine.runs import cached_checkpoint
from desupcon.engine.task import Task, register_task
from desupcon.methods.distill.config import RunConfig
from desupcon.nn.banks import MomentumMemoryBank
from desupcon.nn.losses import supcon_loss
from desupcon.nn.models import ModelWrapper, build_model, fold_batchnorm


@dataclass
class StepOutputs:
    """What a method's loss sees of one step (``B`` local images, ``P`` projection dims).

    cfg: the run's config (its hyperparameters: ``cfg.alpha``, ``cfg.param("margin")``).
    labels: (B,) class ids of the local images.
    logits: (B, C) the student's classifier on view 1 (on detached features for ``probe_head`` methods).
    student_z: (B, P) the student's L2-normalised projections of view 1 (the anchors).
    student_z2: (B, P) of view 2, for ``two_views`` methods (else None).
    teacher_logits: (B, C) the frozen teacher's logits on view 1, for ``teacher_logits`` methods.
    teacher_keys: (K, P) L2-normalised teacher keys of view 2: every rank's, this rank's first (key
        i is the positive of anchor i), then memory-bank keys; for ``teacher_keys`` methods.
    key_labels: (K,) class ids of ``teacher_keys``.
    in_batch_keys: how many of ``teacher_keys`` come from the batch (the rest from the bank).
    features: (B, F) the student's pooled backbone features of view 1.
    teacher_features: (B, F_t) the frozen teacher's pooled backbone features of view 1, for
        ``teacher_logits`` methods.
    modules: the method's own trainable modules (``Method.modules``), by name.
    """

    cfg: object
    labels: torch.Tensor
    logits: torch.Tensor
    student_z: torch.Tensor
    student_z2: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    teacher_keys: torch.Tensor | None = None
    key_labels: torch.Tensor | None = None
    in_batch_keys: int = 0
    features: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None
    modules: dict | None = None

    @property
    def n(self) -> int:
        return self.labels.shape[0]

    def cross_entropy(self) -> torch.Tensor:
        return F.cross_entropy(self.logits, self.labels)

    def supcon(self) -> torch.Tensor:
        """SupCon over both views of every rank's images.

        Under DDP every rank computes the same whole-batch loss; the gather's backward sums the W
        ranks' gradients of each image and DDP's average divides them by W again.
        """
        z_all = torch.cat([dist.gather_local_first(self.student_z), dist.gather_local_first(self.student_z2)])
        y_all = dist.gather_local_first(self.labels)  # (BW,)
        return supcon_loss(z_all, torch.cat([y_all, y_all]), self.cfg.temperature)


DIVERGENCE_ADVICE = ("likely causes: a learning rate that is too high, a temperature that is too low (tau < 0.05 "
                     "with large alpha saturates the exponentials), or a stale memory bank (lower bank_momentum "
                     "or bank_k); lower it and rerun")


@register_task("distill", config_class=RunConfig)
class DistillationTask(Task):
    """Teacher, projection head and student runs for ``desupcon.engine.trainer.Trainer``.

    Args:
        trainer: the core (config, data, device, generators, ``fast``).
        teacher: the trained teacher with its projection head for runs that use one, else None.

    Under DDP the student (and the adapting teacher head) are wrapped in ``DistributedDataParallel``
    and, on GPUs, the student's BatchNorm layers become ``SyncBatchNorm``. A method's own trainable
    modules (``Method.modules``, e.g. FitNets' connector) train with the student and are saved in
    its checkpoints.
    """

    divergence_advice = DIVERGENCE_ADVICE

    def __init__(self, trainer, teacher: ModelWrapper | None = None):
        super().__init__(trainer, teacher)
        cfg, data, device = self.cfg, self.data, self.device
        self.spec = spec = cfg.spec
        self.model = build_model(cfg, data.train.num_classes).to(device)
        if dist.is_distributed() and device.type == "cuda":
            # batch statistics over all ranks' images, as one process on the whole batch would have;
            # PyTorch's SyncBatchNorm runs on GPUs only, so CPU ranks normalise their own images
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.teacher = self.teacher_head = None
        if cfg.role == "projection":  # the teacher's backbone and classifier, frozen; the head learns
            self.model.load_state_dict(teacher.state_dict())
            self.model.backbone.requires_grad_(False)
            self.model.classifier.requires_grad_(False)
        elif spec.needs_teacher:  # frozen teacher backbone (eval mode); its projection head adapts
            self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
            fold_batchnorm(self.teacher.backbone)  # the same function, one pass fewer per layer
            if trainer.channels_last:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
            self.teacher.head.requires_grad_(spec.teacher_keys)
            if spec.teacher_keys:  # under DDP its gradients are averaged over ranks like the student's
                self.teacher_head = dist.wrap(self.teacher.head)
        if not spec.trains_head:  # cross-entropy runs never use the projection head
            self.model.head.requires_grad_(False)
        if trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.bank = None
        if cfg.bank_k:
            self.bank = MomentumMemoryBank(len(data.train), cfg.proj_dim, momentum=cfg.bank_momentum, device=device,
                                           renormalise=not cfg.bank_literal)
        self.own = nn.ModuleDict(spec.modules(cfg, self.model, self.teacher) if spec.modules else {}).to(device)
        self.own_forward = {name: dist.wrap(module) for name, module in self.own.items()}  # gradients averaged over ranks
        self.ddp = dist.wrap(self.model)
        self.ddp_modules = [m for m in (self.ddp, self.teacher_head, *self.own_forward.values())
                            if isinstance(m, nn.parallel.DistributedDataParallel)]
        self.forward = torch.compile(self.ddp) if cfg.compile and device.type == "cuda" else self.ddp

    def parameters(self) -> list:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.teacher is not None:
            params += [p for p in self.teacher.head.parameters() if p.requires_grad]
        return params + list(self.own.parameters())

    @torch.no_grad()
    def prepare(self):
        """Start the bank (if any) from the teacher's embeddings of the unaugmented training images."""
        if self.bank is None:
            return
        train = self.data.train
        _, z, _ = embed(self.teacher, train.images, train.mean, train.std)
        self.bank.update(torch.arange(len(train), device=self.device), z, train.labels)
        dist.broadcast_(self.bank.feats)  # rank 0's: GPU kernels may round differently on each rank

    def extra_state(self) -> dict:
        state = {"own_modules": self.own.state_dict()} if len(self.own) else {}
        if self.teacher is not None:
            state["teacher_head"] = self.teacher.head.state_dict()
        if self.bank is not None:
            state["bank"] = self.bank.state_dict()
        return state

    def load_extra_state(self, state: dict):
        if len(self.own):
            self.own.load_state_dict(state["own_modules"])
        if self.teacher is not None:
            self.teacher.head.load_state_dict(state["teacher_head"])
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])

    def announce(self):
        """On a GPU, the measured peak memory of one process (``desupcon.engine.memory``); a CPU run prints
        nothing, as the smoke profile's many short runs would each pay for the trace (about a second)."""
        if self.device.type == "cuda" and dist.is_main():

            print(announce_line(self.cfg))

    def train(self):
        """Train mode for what learns; a frozen teacher backbone stays in eval mode, so its BatchNorm
        statistics never move while its projection head trains."""
        self.model.train()
        self.own.train()
        if self.cfg.role == "projection":
            self.model.backbone.eval()

    @classmethod
    def untrained_teacher(cls, cfg: RunConfig, num_classes: int) -> ModelWrapper | None:
        return build_model(cfg.teacher, num_classes) if cfg.uses_teacher else None

    @classmethod
    def trained_encoder(cls, cfg: RunConfig, device="cpu") -> ModelWrapper:
        return load_model(cfg, device=device)

    def _views(self, idx):
        images = self.data.train.gather(idx)
        cfg1, cfg2 = PRESETS[self.cfg.views_preset]
        mean, std = self.data.train.mean, self.data.train.std
        x1, x2 = (augment(images, c, mean, std, self.trainer.aug_gen) for c in (cfg1, cfg2))
        if self.trainer.channels_last:
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        return x1, x2

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one forward on this rank's images ``idx`` and the logits used for train accuracy.

        Under DDP the student anchors stay local and the contrast sets (both views of every rank
        for SupCon; the teacher keys and labels for CRD and LW-SupCRD) are gathered with gradient,
        local rows first; the memory bank draws and updates identically on every rank.
        """
        cfg, spec, y = self.cfg, self.spec, self.data.train.labels[idx]
        x1, x2 = self._views(idx)
        b = y.shape[0]
        feats, z, logits = self.forward(torch.cat([x1, x2]) if spec.two_views else x1)
        if spec.probe_head:  # contrastive students learn only from their loss; the classifier reads detached features
            logits = self.model.classifier(feats[:b].detach())
        out = StepOutputs(cfg, y, logits[:b], z[:b], z[b:] if spec.two_views else None, features=feats[:b],
                          modules=self.own_forward)
        if spec.needs_teacher:
            with torch.no_grad():
                t_feats = self.teacher.backbone(torch.cat([x1, x2]) if spec.teacher_keys else x1)
                out.teacher_logits = self.teacher.classifier(t_feats[:b])
                out.teacher_features = t_feats[:b]
        if spec.teacher_keys:
            keys = F.normalize(self.teacher_head(t_feats[b:]), dim=1)  # (B, P) the teacher head adapts (CRD-style)
            out.key_labels = dist.gather_local_first(y)  # (BW,)
            out.teacher_keys = dist.gather_local_first(keys)  # (BW, P): key i is the positive of local anchor i
            out.in_batch_keys = b * dist.world_size()
            if self.bank is not None:
                batch = dist.gather(idx)  # (BW,) the whole step's images, the same on every rank
                with torch.no_grad():  # the shared order_gen draws the same slots on every rank
                    bank_z, bank_y, _ = self.bank.sample(cfg.bank_k, exclude=None if cfg.bank_literal else batch,
                                                         generator=self.trainer.order_gen)
                out.teacher_keys = torch.cat([out.teacher_keys, bank_z])
                out.key_labels = torch.cat([out.key_labels, bank_y])
                self.bank.update(batch, dist.gather(keys.detach().float()), dist.gather(y))
        loss = spec.loss(out)
        if spec.probe_head:
            loss = loss + out.cross_entropy()
        return loss, out.logits


def load_model(cfg: RunConfig, seed: int | None = None, device="cpu") -> ModelWrapper:
    """The trained network of a finished distillation run (eval mode), from its checkpoint."""
    seed = cfg.seeds[0] if seed is None else seed
    ckpt = cached_checkpoint(cfg.for_seed(seed), cfg.run_name(seed))
    if ckpt is None or not ckpt["complete"]:
        raise FileNotFoundError(f"run {cfg.run_name(seed)} is not trained yet ({checkpoint_path(cfg.run_name(seed))}); "
                                f"train it first with desupcon.train(cfg)")
    model = build_model(cfg, ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
