"""Distillation runs: the method records, ``RunConfig``, the task, and methods with modules of their own."""

from desupcon.methods.distill import fitnets, task  # noqa: F401  (each registers its task or method)
