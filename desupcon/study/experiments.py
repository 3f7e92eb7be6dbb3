"""The study's run grids, shared by the notebooks and ``python -m desupcon sweep``.

Each function returns the configs one notebook trains, in order; under ``cifar100`` they are the
write-ups' grids exactly (docs/design.md#grids), under ``smoke`` the profile's shrunk grids.
"""

from __future__ import annotations

from desupcon.methods.distill.config import RunConfig
from desupcon.study.profiles import Profile


def teacher(p: Profile) -> list[RunConfig]:
    return [p.teacher_config(), p.projection_config()]


def headline(p: Profile) -> RunConfig:
    """LW-SupCRD with the write-ups' best hyperparameters (alpha=1, beta=10, tau=0.07, adaptive beta)."""
    return p.student_config("lw_supcrd", seeds=p.headline_seeds)


def _lw_supcrd(p: Profile, **changes) -> RunConfig:
    """An LW-SupCRD student; the headline point keeps the headline seeds wherever it appears."""
    cfg = p.student_config("lw_supcrd", **changes)
    return headline(p) if cfg.name == headline(p).name else cfg


def baselines(p: Profile) -> list[RunConfig]:
    return [p.student_config(m) for m in ("undistilled", "supcon", "crd", "kd", "fitnets")]


def lw_supcrd_sweeps(p: Profile) -> dict[str, list[RunConfig]]:
    """alpha (beta=10, tau=0.07), beta (alpha=1), temperature (alpha=1, beta=10) and hybrid-lambda sweeps."""
    return {
        "alpha": [_lw_supcrd(p, alpha=a) for a in p.alphas],
        "beta": [_lw_supcrd(p, beta=b) for b in p.betas],
        "temperature": [_lw_supcrd(p, temperature=t) for t in p.temperatures],
        "hybrid_lambda": [p.student_config("hybrid", hybrid_lambda=lam) for lam in p.hybrid_lambdas],
    }


def ambiguities(p: Profile) -> list[RunConfig]:
    """The headline LW-SupCRD point with each reading of the write-up that differs from our default:
    the student's own probability in the adaptive beta, instance positives and one pooled term per anchor."""
    return [p.student_config("lw_supcrd", adaptive_beta_source="student"),
            p.student_config("lw_supcrd", positives="instance"),
            p.student_config("lw_supcrd", positive_terms="pooled")]


def bank_ablation(p: Profile) -> list[RunConfig]:
    """The write-ups' four runs, {CRD, LW-SupCRD} x {no bank, a bank of ``p.bank_k`` negatives per step}, under
    the ablation recipe (``registry.BANK_ABLATION_RECIPE``), then two labelled variants of LW-SupCRD with a
    bank: same-label bank entries counted as positives, and the write-ups' literal bank update and sampling."""
    runs = [p.student_config(method, recipe="bank_ablation", bank_k=k) for method in ("crd", "lw_supcrd")
            for k in (0, p.bank_k)]
    return runs + [p.student_config("lw_supcrd", recipe="bank_ablation", bank_k=p.bank_k, bank_positives=True),
                   p.student_config("lw_supcrd", recipe="bank_ablation", bank_k=p.bank_k, bank_literal=True)]


def unique(configs: list[RunConfig]) -> list[RunConfig]:
    """Configs in order without repeats (sweeps share their default point)."""
    seen, out = set(), []
    for cfg in configs:
        if cfg.name not in seen:
            seen.add(cfg.name)
            out.append(cfg)
    return out


GRIDS = {
    "01_teacher": teacher,
    "02_baselines": lambda p: [headline(p)] + baselines(p),
    "03_lw_supcrd_sweeps": lambda p: unique([c for grid in lw_supcrd_sweeps(p).values() for c in grid] + ambiguities(p)),
    "04_memory_bank_ablation": bank_ablation,
}


def grid(name: str, p: Profile) -> list[RunConfig]:
    """The configs of the notebook or grid ``name`` (``"02_baselines"`` or ``"02_baselines.ipynb"``)."""
    key = name.removesuffix(".ipynb").rsplit("/", 1)[-1]
    if key not in GRIDS:
        raise ValueError(f"unknown grid '{name}': choose one of {sorted(GRIDS)}")
    return unique(GRIDS[key](p))
