"""Layer 5, study: ``train``, the profiles, the notebooks' experiment grids, sweeps, Slurm, ``reproduce``.

Imports the layers below; ``desupcon.study.train`` imports ``desupcon.methods``, which registers every built-in task.
"""
