"""FitNets feature distillation (docs/design.md#fitnets-hint-loss): a student with a trainable connector.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015,
https://arxiv.org/abs/1412.6550. A connector ``r`` (a Linear layer, 512 -> 2048 for ResNet-18 ->
ResNet-50) maps the student's pooled backbone features ``f_s`` onto the frozen teacher's ``h``:

    L = CE(student logits, y) + hint_weight · MSE(r(f_s), h)

in one stage (the paper trains the guided layers on the hint first); the connector trains with the
student and is saved in its checkpoints, outside the evaluated encoder. Importing this module
registers the method: ``python -m desupcon train fitnets --set hint_weight=2``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from desupcon.methods.distill.registry import Method, Param, register


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, connector: nn.Module) -> torch.Tensor:
    """FitNets' hint: ``mean((r(f_s) − h)²)`` over every entry (Romero et al. 2015, eq. 3, its ½ in the weight).

    Args:
        student_features: (B, F_s) the student's pooled backbone features.
        teacher_features: (B, F_t) the frozen teacher's.
        connector: ``r``, mapping (B, F_s) to (B, F_t).
    """
    if student_features.dim() != 2 or teacher_features.dim() != 2 or \
            student_features.shape[0] != teacher_features.shape[0]:
        raise ValueError(f"student_features (B, F_s) and teacher_features (B, F_t) must be 2-D with one B, got "
                         f"{tuple(student_features.shape)} and {tuple(teacher_features.shape)}")
    return F.mse_loss(connector(student_features).float(), teacher_features.float())


def _connector(cfg, student: nn.Module, teacher: nn.Module) -> dict[str, nn.Module]:
    return {"connector": nn.Linear(student.classifier.in_features, teacher.classifier.in_features)}


def _fitnets(out) -> torch.Tensor:
    return out.cross_entropy() + out.cfg.param("hint_weight") * hint_loss(out.features, out.teacher_features,
                                                                          out.modules["connector"])


register(Method("fitnets", role="student", loss=_fitnets, teacher_logits=True, augment="standard", modules=_connector,
                params={"hint_weight": Param(1.0, "> 0", lambda v: v > 0)},
                stem=lambda cfg: f"student_fitnets_hint_{cfg.param('hint_weight')}",
                label=lambda cfg: f"FitNets λ={cfg.param('hint_weight'):g}"))
