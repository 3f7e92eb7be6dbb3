"""What a run kind gives the trainer core: the ``Task`` base class, the config protocol, the task registry.

The engine names no task. A method's module defines a ``Task`` subclass and registers it under a
name with ``register_task``; a run's config says which task it is (``TaskConfig.task``), and
``task_for(cfg)`` finds the class. Registration happens when the module is imported:
``import desupcon.methods`` imports every built-in method (the CLI, the study layer and the
notebooks do).

A new self-supervised method is one file (``desupcon/methods/ssl/simclr.py`` is the example)::

    @register_task("simclr", config_class=SSLConfig)
    class SimCLRTask(TwoViewTask):
        ...
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from desupcon.core.config import Config
from desupcon.core.errors import ConfigError

DIVERGENCE_ADVICE = "likely cause: a learning rate that is too high; lower it and rerun"


class TaskConfig(Config):
    """What the engine reads of a run's config, with the defaults of a single-seed run without a teacher.

    A config class of a task subclasses this (and a frozen dataclass) and defines at least
    ``task``, ``name``, ``recipe``, ``evaluation``, ``dataset``, ``label`` and ``results_group``.

    task: the name the run's ``Task`` is registered under (``TASKS``).
    name: the run's name without the seed (file stem of its artefacts).
    recipe: the ``Recipe`` the trainer core follows.
    evaluation: the ``EvalConfig`` of the frozen-feature evaluation at the end.
    dataset: the dataset name ``desupcon.images.datasets.Data.load`` reads.
    image_size: the side the evaluation reads images at (None: the dataset's own).
    label: a short name for figures and tables, e.g. "LW-SupCRD α=1 β=10".
    caption: what a figure of the run shows: data, split, profile or run, seed.
    results_group: the comprehensive-results file the run is recorded in.
    """

    task: str
    image_size = None

    @property
    def seeds(self) -> tuple[int, ...]:
        return (self.recipe.seed,)

    @property
    def seed(self) -> int:
        return self.seeds[0]

    def for_seed(self, seed: int) -> "TaskConfig":
        """The single-seed config of one run (what its checkpoint stores)."""
        return self

    def run_name(self, seed: int) -> str:
        return self.name

    def upstream(self) -> tuple["TaskConfig", ...]:
        """The configs of the runs this run is built on, trained first (e.g. a student's teacher)."""
        return ()

    def with_batch(self, batch: int) -> "TaskConfig":
        """This config at ``batch`` images per forward (the memory tracer's)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to change its batch size")

    @property
    def head_is_trained(self) -> bool:
        """The run trains a projection head, so its geometry is measured there (else on backbone features)."""
        return True

    @property
    def reports_head(self) -> bool:
        """The run's own classifier is its test accuracy (a teacher's); else the linear probe is."""
        return False


class Task:
    """One run kind for ``desupcon.engine.trainer.Trainer``: its modules, parameters, loss and extra state.

    Args:
        trainer: the core, read for ``cfg``, ``data``, ``device``, ``fast``, ``aug_gen``, ``order_gen``
            and ``steps_per_epoch``.
        teacher: the trained network of ``cfg.upstream()`` the run builds on (a student's teacher), or None.

    A subclass sets ``model`` (the trained network) and ``forward`` (``model`` or its DDP wrapper)
    in ``__init__`` and defines ``loss``; everything else has a default.
    ``ddp_modules``: the ``DistributedDataParallel`` modules whose gradient sync accumulation defers.
    """

    config_class: type = TaskConfig
    title: str = "run"  # the method's name in logs and figures, e.g. "MoCo-v3"
    divergence_advice: str = DIVERGENCE_ADVICE

    def __init__(self, trainer, teacher: nn.Module | None = None):
        self.trainer, self.cfg, self.data, self.device = trainer, trainer.cfg, trainer.data, trainer.device
        self.ddp_modules: list[nn.Module] = []

    def prepare(self) -> None:
        """Data-dependent set-up before the first step (e.g. fill a memory bank); not run by the memory tracer."""

    def parameters(self) -> list[torch.Tensor]:
        """What the optimiser updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def extra_state(self) -> dict:
        """Checkpoint entries beside the model's state (a bank, a head outside the model)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what ``extra_state`` saved."""

    def announce(self) -> None:
        """Lines printed before training starts (rank 0 only, by the task)."""

    def train(self) -> None:
        """Train mode for what learns."""
        self.model.train()

    def begin_step(self, global_step: int, total_steps: int) -> None:
        """Called before each optimiser step (e.g. a momentum schedule)."""

    def log_entry(self) -> dict:
        """Extra numbers of the epoch's log entry."""
        return {}

    def encoder(self) -> nn.Module:
        """``x -> (features, projections[, logits])``: what the evaluation reads."""
        return self.model

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss of one forward on this rank's images ``idx`` and the logits for train accuracy (or None)."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg: TaskConfig, fail: Callable[[str, object, str], Exception]) -> None:
        """Checks of ``cfg`` that only this task needs; raise ``fail(key, value, requirement)``."""

    @classmethod
    def untrained_teacher(cls, cfg: TaskConfig, num_classes: int) -> nn.Module | None:
        """A randomly initialised network of the shape of the teacher ``cfg`` trains from (None: no
        teacher): what the memory tracer builds the task with, without any trained weights."""
        return None

    @classmethod
    def weight_files(cls, cfg: TaskConfig) -> dict[str, str]:
        """The weight files a run of ``cfg`` loads, by the config field naming each (e.g.
        ``{"model.teacher_weights": path}``): the engine fingerprints them into the run's identity."""
        return {}

    @classmethod
    def trained_encoder(cls, cfg: TaskConfig, device="cpu") -> nn.Module:
        """The encoder of a finished run, from its saved weights, in eval mode."""
        raise NotImplementedError(f"{cls.__name__} cannot load a finished run")


TASKS: dict[str, type[Task]] = {}


def register_task(name: str, config_class: type | None = None) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a ``Task`` subclass under ``name`` (``TaskConfig.task``), with the
    config class its YAML files load into (default: the class's own ``config_class``)."""
    def add(cls: type[Task]) -> type[Task]:
        if config_class is not None:
            cls.config_class = config_class
        TASKS[name] = cls
        return cls
    return add


def task_for(cfg: TaskConfig) -> type[Task]:
    """The registered ``Task`` class of ``cfg``; ``ConfigError`` naming the registered ones if none."""
    if cfg.task not in TASKS:
        raise ConfigError(f"no task '{cfg.task}' is registered (registered: {sorted(TASKS)}); "
                          f"import desupcon.methods to register the built-in methods")
    return TASKS[cfg.task]

