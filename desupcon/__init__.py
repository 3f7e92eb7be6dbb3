"""desupcon: contrastive knowledge distillation (LW-SupCRD and baselines) and MoCo-v3 pretraining.

The package is imported by the notebooks in ``notebooks/``; each submodule holds one concept:
``losses``, ``banks``, ``data``, ``augment``, ``models``, ``config``, ``profiles``, ``runs``
(caching and checkpoints), ``train``, ``evaluate``, ``metrics``, ``plots``, ``results``, ``moco``.
"""

__version__ = "0.1.0"
