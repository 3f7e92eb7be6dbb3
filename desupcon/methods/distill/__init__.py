"""Distillation runs: the method records, ``RunConfig``, the task, and methods with modules of their own."""

from desupcon.methods.distill import task  # noqa: F401  (registers the distillation task)
