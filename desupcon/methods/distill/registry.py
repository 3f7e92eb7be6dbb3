"""The method registry: one record per method, read by config validation, the trainer, the CLI and run names.

A record says what a method is: its loss (a function of the step's ``desupcon.methods.distill.task.StepOutputs``),
whether it needs a teacher and on how many views, which heads it trains, its named hyperparameters
(spelled out in its run name) and any hyperparameters of its own with their checks, its default
augmentation, whether it samples a memory bank, any trainable modules of its own, and its defaults
where they differ from ``RunConfig``'s. Adding a method is one ``register(Method(...))`` call plus
its loss function (``desupcon/methods/distill/fitnets.py`` is a whole method in one file)::

    from desupcon.methods.distill.registry import Method, Param, register

    def margin_loss(out):  # out: desupcon.methods.distill.task.StepOutputs
        sim = out.student_z @ out.teacher_keys.T  # (B, K): key i is the positive of anchor i
        own = sim[:, :out.n].diagonal()  # (B,)
        others = (sim.sum(dim=1) - own) / (sim.shape[1] - 1)  # (B,) mean cosine to the other keys
        return torch.relu(out.cfg.param("margin") - (own - others)).mean()

    register(Method("margin", role="student", loss=margin_loss, teacher_keys=True, trains_head=True,
                    probe_head=True, params={"margin": Param(0.5, "in (0, 2]", lambda v: 0 < v <= 2)},
                    stem=lambda cfg: f"student_margin_{cfg.param('margin')}"))

after which ``train(profile.student_config("margin"))`` and ``python -m desupcon train margin`` work.
The records are distillation methods; self-supervised methods are tasks of their own
(``desupcon.engine.task.register_task``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch.nn.functional as F

from desupcon.nn.losses import crd_loss, hybrid_loss, kd_loss, lw_supcrd_loss

ROLES = ("teacher", "projection", "student")

# The two student recipes of the write-ups (004_*): the baselines and sweeps use Adam at a constant
# lr 1e-3 without weight decay (``RunConfig``'s defaults); the memory-bank ablation adds these.
BANK_ABLATION_RECIPE = dict(weight_decay=1e-4, schedule="cosine")  # "WD=1e-4, 50 epochs with cosine annealing"


@dataclass(frozen=True)
class Param:
    """A hyperparameter a method declares itself: its default and its check ("must be ``requirement``")."""

    default: Any
    requirement: str
    ok: Callable[[Any], bool]


@dataclass(frozen=True)
class Method:
    """One method.

    Args:
        name: the key of the record (``RunConfig.method``; teacher and projection runs use theirs).
        role: "teacher", "projection" or "student".
        loss: ``loss(out: StepOutputs) -> scalar`` of a distillation step.
        two_views: the student sees both augmented views (else view 1 only) (default: False).
        teacher_logits: the frozen teacher's logits on view 1 are computed (default: False).
        teacher_keys: the teacher's adapting projection head gives keys of view 2, gathered over
            ranks and joined by memory-bank keys; the head trains with the student (default: False).
        trains_head: the student's projection head gets gradients (default: False).
        probe_head: the classifier trains on detached features by cross-entropy beside the loss,
            as the write-ups do for contrastive students (default: False).
        hyperparameters: config fields spelled out in the run name (default: none).
        params: hyperparameters of the method's own, not ``RunConfig`` fields (default: none).
        augment: default augmentation preset of the training views (default: "supcon").
        uses_bank: can sample a memory bank (``bank_k``) (default: False).
        modules: ``modules(cfg, student, teacher) -> {name: nn.Module}``, trainable modules of the
            method's own (e.g. a connector from student to teacher features), trained with the
            student, saved in its checkpoints and handed to the loss as ``out.modules`` (default: none).
        stem: ``stem(cfg) -> str``, the run name before ``_<arch>_<dataset>`` (default: the name).
        name_suffix: appended after ``_<arch>_<dataset>`` (default: none).
        label: ``label(cfg) -> str``, a short name for figures and tables, e.g. "LW-SupCRD α=1 β=10"
            (default: the name).
        ablation_stem: the write-ups' stem of this method's bank-ablation runs
            (``<ablation_stem>_bank4096`` / ``_nobank``), used for runs under ``BANK_ABLATION_RECIPE``
            (default: none, the method's ``stem`` in every recipe).
        defaults: config defaults where they differ from ``RunConfig``'s, i.e. the write-ups' recipe
            for this method; fields at these values are not hashed into the run name (default: none).
    """

    name: str
    role: str
    loss: Optional[Callable] = None
    two_views: bool = False
    teacher_logits: bool = False
    teacher_keys: bool = False
    trains_head: bool = False
    probe_head: bool = False
    hyperparameters: tuple[str, ...] = ()
    params: dict[str, Param] = field(default_factory=dict)
    augment: str = "supcon"
    uses_bank: bool = False
    modules: Optional[Callable] = None
    stem: Optional[Callable] = None
    name_suffix: str = ""
    label: Optional[Callable] = None
    ablation_stem: str = ""
    defaults: dict = field(default_factory=dict)

    @property
    def needs_teacher(self) -> bool:
        return self.teacher_logits or self.teacher_keys

    def short_label(self, cfg) -> str:
        """``label(cfg)``, then the bank, its variant and the ablation recipe: "CRD + bank 4096 (ablation)"."""
        text = self.label(cfg) if self.label else self.name
        if self.role != "student":
            return text
        text += f" + bank {cfg.bank_k}" if cfg.bank_k else ""
        text += ", bank pos." if cfg.bank_positives else ""
        text += ", literal bank" if cfg.bank_literal else ""
        return text + (" (ablation)" if self.in_bank_ablation(cfg) else "")

    def in_bank_ablation(self, cfg) -> bool:
        """The run follows the write-ups' bank-ablation recipe and is named as its ablation runs were."""
        return bool(self.ablation_stem) and all(getattr(cfg, k) == v for k, v in BANK_ABLATION_RECIPE.items())

    def reference_name(self, cfg) -> str:
        """The run's name as the write-ups spelled it: ``stem`` (or ``ablation_stem`` and the bank), the bank,
        ``_<arch>_<dataset>``, ``name_suffix``; ``_bankpos`` marks the same-label-positives bank variant,
        ``_banklit`` the write-ups' literal bank update and sampling."""
        if self.in_bank_ablation(cfg):
            stem = f"{self.ablation_stem}_" + (f"bank{cfg.bank_k}" if cfg.bank_k else "nobank")
        else:
            stem = (self.stem(cfg) if self.stem else self.name) + (f"_bank{cfg.bank_k}" if cfg.bank_k else "")
        stem += "_bankpos" if cfg.bank_positives else ""
        stem += "_banklit" if cfg.bank_literal else ""
        return f"{stem}_{cfg.arch}_{cfg.dataset_title}{self.name_suffix}"

    def named_fields(self, cfg) -> set[str]:
        """The config fields ``reference_name`` spells out (the rest are hashed into the run name)."""
        spelled = {"role", "method", "arch", "bank_k", "bank_positives", "bank_literal"}
        spelled |= {"dataset"} if cfg.dataset == cfg.dataset_title else set()  # a folder's path is hashed in
        if self.in_bank_ablation(cfg):
            return spelled | set(BANK_ABLATION_RECIPE)
        return spelled | set(self.hyperparameters)

    def defaults_for(self, cfg) -> dict:
        """Every field's default for a run of this method (``RunConfig``'s, then ``defaults``)."""
        base = {f.name: f.default for f in dataclasses.fields(cfg)}
        return {**base, **self.defaults, "augment": self.augment}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (replacing a record of the same name) and return it."""
    if method.role not in ROLES:
        raise ValueError(f"method '{method.name}': role must be one of {list(ROLES)}, got '{method.role}'")
    if method.loss is None:
        raise ValueError(f"method '{method.name}': a {method.role} method needs a loss")
    METHODS[method.name] = method
    return method


def method_of(cfg) -> Method:
    """The record of a distillation config's ``method``; ``KeyError`` naming the registered ones if none."""
    name = cfg.method
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}': choose one of {sorted(METHODS)}")
    return METHODS[name]


def student_methods() -> list[str]:
    return [name for name, m in METHODS.items() if m.role == "student"]


def runnable() -> list[str]:
    """What ``python -m desupcon train RUN`` accepts: the teacher, its projection head, each student method."""
    return ["teacher", "projection", *student_methods()]


# ---- the losses of the built-in methods, from the step's outputs ----

def _cross_entropy(out):
    return F.cross_entropy(out.logits, out.labels)


def _supcon(out):
    return out.supcon()


def _kd(out):
    cfg = out.cfg
    return (1 - cfg.kd_weight) * out.cross_entropy() + cfg.kd_weight * kd_loss(out.logits, out.teacher_logits,
                                                                                cfg.kd_temperature)


def _crd(out):
    return crd_loss(out.student_z, out.teacher_keys, out.cfg.temperature)


def _lw_supcrd(out):
    cfg = out.cfg
    target_probs = None  # "teacher": the teacher's p_i[y_i]
    if cfg.adaptive_beta_source == "student":  # the student's own classifier probability of its class
        target_probs = out.logits.detach().float().softmax(dim=1).gather(1, out.labels[:, None]).squeeze(1)
    return lw_supcrd_loss(out.student_z, out.labels, out.teacher_keys, out.key_labels,
                          out.teacher_logits.float().softmax(dim=1), alpha=cfg.alpha, beta=cfg.beta,
                          temperature=cfg.temperature, adaptive_beta=cfg.adaptive_beta,
                          in_batch_keys=None if cfg.bank_positives else out.in_batch_keys,
                          target_probs=target_probs, positives=cfg.positives, positive_terms=cfg.positive_terms)


def _hybrid(out):
    return hybrid_loss(out.supcon(), _lw_supcrd(out), out.cfg.hybrid_lambda)


def _number(x: float) -> str:
    return f"{x:g}"


def _tau(name: str, cfg) -> str:
    return name if cfg.temperature == 0.07 else f"{name} τ={_number(cfg.temperature)}"


def _lw_label(name: str):
    def label(cfg):
        text = f"{name} α={_number(cfg.alpha)} β={_number(cfg.beta)}"
        text += "" if cfg.temperature == 0.07 else f" τ={_number(cfg.temperature)}"
        text += "" if cfg.adaptive_beta else ", fixed β"
        text += ", student p" if cfg.adaptive_beta_source == "student" else ""
        text += ", instance pos." if cfg.positives == "instance" else ""
        return text + (", pooled pos." if cfg.positive_terms == "pooled" else "")
    return label


def _lw_stem(prefix: str):
    def stem(cfg):
        name = f"{prefix}alpha_{cfg.alpha}_beta_{cfg.beta}_temp_{cfg.temperature}"
        name += "" if cfg.adaptive_beta else "_fixedbeta"
        name += "_studentbeta" if cfg.adaptive_beta_source == "student" else ""
        name += "_instancepos" if cfg.positives == "instance" else ""
        return name + ("_pooledpos" if cfg.positive_terms == "pooled" else "")
    return stem


_LW = ("alpha", "beta", "temperature", "adaptive_beta", "adaptive_beta_source", "positives", "positive_terms")
_TEACHER_RECIPE = dict(arch="resnet50", epochs=200, optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine",
                       warmup_epochs=1)

register(Method("ce", role="teacher", loss=_cross_entropy, augment="standard", defaults=_TEACHER_RECIPE,
                stem=lambda cfg: "teacher", label=lambda cfg: "Teacher"))
register(Method("supcon_head", role="projection", loss=_supcon, two_views=True, trains_head=True,
                defaults=dict(arch="resnet50", epochs=10, weight_decay=0.0), stem=lambda cfg: "teacher",
                label=lambda cfg: "Teacher + head",
                name_suffix="_with_projection"))
register(Method("undistilled", role="student", loss=_cross_entropy, augment="standard",
                stem=lambda cfg: "student_undistilled", label=lambda cfg: "Undistilled"))
register(Method("supcon", role="student", loss=_supcon, two_views=True, trains_head=True, probe_head=True,
                stem=lambda cfg: "student_baseline_supcon", label=lambda cfg: _tau("SupCon", cfg)))  # the write-ups' name; another tau is hashed
register(Method("crd", role="student", loss=_crd, teacher_logits=True, teacher_keys=True, trains_head=True,
                probe_head=True, uses_bank=True, stem=lambda cfg: "student_baseline_crd", label=lambda cfg: _tau("CRD", cfg),
                ablation_stem="student_baseline_crd"))
register(Method("kd", role="student", loss=_kd, teacher_logits=True, augment="standard",
                hyperparameters=("kd_temperature",), stem=lambda cfg: f"student_baseline_kd_T_{cfg.kd_temperature}",
                label=lambda cfg: f"KD T={_number(cfg.kd_temperature)}"))
register(Method("lw_supcrd", role="student", loss=_lw_supcrd, teacher_logits=True, teacher_keys=True,
                trains_head=True, probe_head=True, uses_bank=True, hyperparameters=_LW, stem=_lw_stem("student_"),
                label=_lw_label("LW-SupCRD"), ablation_stem="student_lwsupcrd"))
register(Method("hybrid", role="student", loss=_hybrid, two_views=True, teacher_logits=True, teacher_keys=True,
                trains_head=True, probe_head=True, uses_bank=True, hyperparameters=("hybrid_lambda", *_LW),
                stem=lambda cfg: f"student_hybrid_lambda_{cfg.hybrid_lambda}_" + _lw_stem("")(cfg),
                label=lambda cfg: _lw_label(f"Hybrid λ={_number(cfg.hybrid_lambda)}")(cfg)))
