"""Layer 3, engine: ``Recipe``, the ``Task`` base class and task registry, the trainer, evaluation, metrics,
GPU memory tracing, live curves, the run cache and lineage. It names no task.

Imports ``desupcon.core``, ``desupcon.images`` and ``desupcon.nn``.
"""
