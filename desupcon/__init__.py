"""desupcon: contrastive knowledge distillation (LW-SupCRD and baselines) and MoCo-v3 pretraining.

The package is imported by the notebooks in ``notebooks/``; each submodule holds one concept, in
the order data flows through them: ``data``, ``augment``, ``models``, ``losses``, ``banks``,
``registry`` (one record per method), ``config``/``moco_config`` (the one config system),
``profiles``, ``experiments``, ``engine`` (the trainer core), ``distill`` and ``moco`` (what each run
kind adds), ``store`` (artefacts), ``train``, ``evaluate``, ``metrics``, ``analysis``, ``plots``,
``report``, ``reference_results``, ``distributed``, ``sweep``.
"""

__version__ = "0.1.0"
