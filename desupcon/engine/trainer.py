"""The trainer core every run uses: generators, autocast and grad scaler, accumulation, NaN guard,
optimiser and schedule, epoch checkpoints and exact resume.

A run kind supplies only what differs, as a *task* (``desupcon.engine.task.Task``, found by
``task_for(cfg)``): its modules, its trainable parameters, the loss of a micro-batch, extra
checkpoint state and the encoder evaluated at the end; the engine names none. ``fit(cfg, ...)`` trains one single-seed run
(or loads it from the artefact store), resuming exactly from its last epoch checkpoint.

Data order: every epoch draws one permutation from ``order_gen`` (the same on every rank); optimiser
step s takes ``accum_steps`` forwards of ``batch_size`` images each, and rank r trains on its slice
``[r * per_rank, (r + 1) * per_rank)`` of each forward's images. Each rank has its own augmentation
stream ``aug_gen``; checkpoints hold every rank's stream, and each rank gets its own back on resume.
The epoch's batches are drawn before its first step and handed to ``ImageDataset.prefetch``, so a
streamed dataset reads each rank's own images ahead of their step.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from tqdm import tqdm

from desupcon.core import distributed as dist
from desupcon.core.artefacts import (CHECKPOINT_FORMAT, atomic_link, atomic_save, atomic_write_json, content_hash,
                                     read_json)
from desupcon.core.checks import GRAD_NORM_BOUND, LOSS_BOUND, WEIGHT_BOUND
from desupcon.core.errors import CheckpointError, DivergenceError
from desupcon.core.paths import checkpoint_path, log_path, snapshot_path
from desupcon.images.datasets import Data
from desupcon.engine.evaluate import evaluate_run
from desupcon.engine.live import EpochWriter
from desupcon.engine.recipe import Recipe, lr_factor
from desupcon.engine.runs import cached_checkpoint
from desupcon.engine.task import DIVERGENCE_ADVICE, task_for


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_optimizer(recipe: Recipe, params, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``params``: fused on CUDA, foreach elsewhere (SGD is Nesterov)."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.sgd_momentum, weight_decay=recipe.weight_decay,
                               nesterov=True, **fast)
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **fast)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware, so that bf16 autocast is faster than fp32 there.

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later). CPU: AMX tiles or AVX-512 BF16,
    from PyTorch's CPUID probes ``torch.cpu._is_amx_tile_supported`` and ``_is_avx512_bf16_supported``
    (on Linux the ``amx_tile`` and ``avx512_bf16`` flags of /proc/cpuinfo). Any other CPU or device:
    False (bf16 would be emulated, slower than fp32).

    Args:
        device: the training device.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


_FAST_ANNOUNCED: set[str] = set()  # the fast-path choices this process has printed


def resolve_fast(fast: bool | str, device: torch.device, amp: bool) -> tuple[bool, str]:
    """``Trainer``'s ``fast`` as a bool and a line saying what it chose and why.

    Args:
        fast: True (mixed precision), False (fp32) or "auto": mixed precision when the recipe's
            ``amp`` allows it and the device is a CUDA GPU (fp16 with a grad scaler where it lacks
            bf16) or has native bf16 (``native_bf16``), fp32 elsewhere.
        device: the training device.
        amp: the recipe's ``amp`` flag (read by "auto" only).
    """
    if fast not in (True, False, "auto"):
        raise ValueError(f"fast must be True, False or 'auto', got {fast!r}")
    if fast != "auto":
        return fast, f"fast={'on' if fast else 'off'}: " + (_mixed_precision(device) if fast else "fp32")
    if not amp:
        return False, "fast=auto: fp32 (the recipe's amp is off)"
    if device.type == "cuda" or native_bf16(device):
        return True, f"fast=auto: {_mixed_precision(device)}"
    return False, f"fast=auto: fp32 ({device.type.upper()} has no native bf16: neither AMX nor AVX-512 BF16)"


def _mixed_precision(device: torch.device) -> str:
    """What the fast path runs on ``device``, and the hardware it runs on."""
    if device.type == "cuda":
        return ("bf16 autocast + channels_last (CUDA GPU with bf16)" if native_bf16(device)
                else "fp16 autocast + grad scaler + channels_last (this CUDA GPU has no bf16)")
    if device.type == "cpu" and torch.cpu._is_amx_tile_supported():
        return "bf16 autocast + channels_last (CPU has AMX)"
    unit = "AVX-512 BF16" if native_bf16(device) else "no native bf16: emulated"
    return f"bf16 autocast + channels_last ({device.type.upper()} has {unit})"


def uses_channels_last(device: torch.device, mixed_precision: bool) -> bool:
    """Whether CNNs train in channels_last memory format (what tasks read as ``Trainer.channels_last``).

    On with mixed precision (the bf16 and fp16 convolution kernels want it), and on a CPU in fp32 too:
    oneDNN runs fp32 convolutions on NCHW tensors by reordering them to its own layout and back
    around every convolution, which channels_last avoids (on a 2-core AMD EPYC, fp32: a CIFAR
    ResNet-18 SupCon step 1.3x faster, a frozen ResNet-50's forward 1.5x; benchmarks/RESULTS.md).
    The same numbers up to float rounding (``tests/test_fast_cpu.py``). fp32 on a GPU stays NCHW.

    Args:
        device: the training device.
        mixed_precision: whether the forwards run under bf16 or fp16 autocast (``resolve_fast``).
    """
    return mixed_precision or device.type == "cpu"


def _autocast_dtype(device: torch.device, fast: bool) -> torch.dtype | None:
    """bf16 where mixed precision is on (fp16 on GPUs without bf16); None = full precision."""
    if not fast:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def train_step(task, optimizer: torch.optim.Optimizer, micro_batches, autocast_dtype: torch.dtype | None,
               scaler: torch.amp.GradScaler, forward=None, after_forward=None):
    """One optimisation step of ``task``: a forward and backward per micro-batch, then the update.

    Args:
        task: the run's ``Task``; its ``loss(idx)`` gives each micro-batch's loss and logits.
        optimizer: the optimiser of ``task.parameters()``.
        micro_batches: index tensors of this rank's images, one per forward (``accum_steps`` of them).
        autocast_dtype: mixed precision of the forwards (bf16 or fp16), or None for full precision.
        scaler: the grad scaler (enabled for fp16 only).
        forward: ``forward(idx) -> (loss, logits)`` (default: ``task.loss``; the memory tracer wraps it).
        after_forward: called after each forward, before its backward (the memory tracer's probe).

    Under DDP the gradient sync of every forward but the last is deferred (``task.ddp_modules``).
    Returns the detached mean loss, the logits of every image (None for runs without a
    classifier) and the gradient norm before the update; nothing here waits for the device.
    """
    forward = forward or task.loss
    accum = len(micro_batches)
    optimizer.zero_grad(set_to_none=True)
    device_type = next(iter(micro_batches)).device.type
    total, logits = None, []
    for micro, part in enumerate(micro_batches):
        with contextlib.ExitStack() as stack:
            if dist.is_distributed() and micro < accum - 1:  # gradients are averaged over ranks once, at the end
                for module in task.ddp_modules:
                    stack.enter_context(module.no_sync())
            with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                loss, part_logits = forward(part)
            if after_forward is not None:
                after_forward()
            scaler.scale(loss / accum if accum > 1 else loss).backward()
        total = loss.detach() / accum if total is None else total + loss.detach() / accum
        if part_logits is not None:
            logits.append(part_logits.detach())
    scaler.unscale_(optimizer)
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else None
    scaler.step(optimizer)
    scaler.update()
    return total, (torch.cat(logits) if len(logits) > 1 else logits[0]) if logits else None, grad_norm


class Trainer:
    """State and step of one single-seed run of any kind.

    Args:
        cfg: the run's single-seed config (any registered task's: ``RunConfig``, ``SSLConfig``).
        data: train/test splits on ``device``.
        device: training device.
        teacher: the trained teacher (with projection head) for distillation runs that use one.
        fast: mixed precision (bf16 autocast): True, False or "auto" (default: where the hardware
            runs bf16 natively and the recipe's amp allows it, ``resolve_fast``; the choice is printed
            once per process). The maths is the same in fp32.

    ``task`` holds what the run kind supplies; ``model`` is its trained network. ``mixed_precision``
    is the resolved ``fast``; ``channels_last`` is the layout tasks read: True = CNNs and their views
    in channels_last (``uses_channels_last``: with mixed precision, and on a CPU in fp32 too).
    """

    def __init__(self, cfg, data: Data, device, teacher=None, fast: bool | str = "auto"):
        self.cfg, self.data, self.device = cfg, data, torch.device(device)
        self.recipe = r = cfg.recipe
        self.mixed_precision, choice = resolve_fast(fast, self.device, r.amp)
        self.channels_last = uses_channels_last(self.device, self.mixed_precision)
        if self.channels_last and not self.mixed_precision:
            choice += ", channels_last (oneDNN's fp32 convolutions run faster on it)"
        if choice not in _FAST_ANNOUNCED and dist.is_main():
            _FAST_ANNOUNCED.add(choice)
            print(choice)
        self.autocast_dtype = _autocast_dtype(self.device, self.mixed_precision)
        torch.manual_seed(r.seed)
        torch.backends.cudnn.benchmark = True
        self.order_gen = torch.Generator(device=self.device).manual_seed(r.seed)  # same on every rank
        self.aug_gen = torch.Generator(device=self.device).manual_seed(r.seed + 1000003 * (dist.rank() + 1))
        self.task = task_for(cfg)(self, teacher)
        self.task.prepare()
        self.model = self.task.model
        self.steps_per_epoch = len(data.train) // (r.batch_size * r.accum_steps)
        self.total_steps = r.epochs * self.steps_per_epoch
        self.global_step = 0
        self.optimizer = build_optimizer(r, self.task.parameters(), self.device)
        warmup = r.warmup_epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, self.total_steps, r.schedule))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.grad_norm = torch.zeros((), device=self.device)  # of the last step, before the update

    def state_dict(self) -> dict:
        """Everything a resume needs; under DDP every rank calls it (it gathers each rank's augmentation RNG)."""
        aug = dist.gather(self.aug_gen.get_state().to(self.device)).view(dist.world_size(), -1).cpu()  # (W, S)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "global_step": self.global_step,
                "rng": {"order": self.order_gen.get_state(), "aug": aug, "torch": torch.get_rng_state()},
                **self.task.extra_state()}

    def load_state_dict(self, state: dict):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.global_step = state["global_step"]
        self.order_gen.set_state(state["rng"]["order"])
        aug = state["rng"]["aug"]  # (world size that saved it, S): one augmentation stream per rank
        if len(aug) == dist.world_size():
            self.aug_gen.set_state(aug[dist.rank()].clone())  # its own storage: a row view segfaults
        elif dist.is_main():
            print(f"[resume] saved by {len(aug)} processes, resumed by {dist.world_size()}: augmentations restart "
                  f"from their seeds (data order, model, optimiser and bank resume exactly)")
        torch.set_rng_state(state["rng"]["torch"])
        self.task.load_extra_state(state)

    def step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimisation step on this rank's images ``idx`` (``accum_steps`` forwards, in order; ``train_step``).

        Returns the detached mean loss and the logits of every image (None for runs without a
        classifier) and leaves the gradient norm in ``grad_norm``; nothing here waits for the device.
        """
        self.task.begin_step(self.global_step, self.total_steps)
        loss, logits, grad_norm = train_step(self.task, self.optimizer, idx.chunk(self.recipe.accum_steps),
                                             self.autocast_dtype, self.scaler)
        self.grad_norm = self.grad_norm if grad_norm is None else grad_norm
        self.scheduler.step()
        self.global_step += 1
        return loss, logits

    def epoch(self, epoch: int, run_name: str, bar) -> dict:
        """One epoch; returns its log entry over all ranks. Losses stay on the device until the end of the epoch."""
        r, start = self.recipe, time.time()
        self.task.train()
        order = torch.randperm(len(self.data.train), generator=self.order_gen, device=self.device)
        per_rank = r.batch_size // dist.world_size()
        losses = torch.zeros(self.steps_per_epoch, device=self.device)
        grad_norms = torch.zeros(self.steps_per_epoch, device=self.device)
        correct = torch.zeros((), device=self.device)
        has_logits = False
        check_every = 1 if self.device.type == "cpu" else 50  # a host check is free on the CPU
        steps = []  # this rank's images of each step, drawn up front so a streamed dataset can read them ahead
        for step in range(self.steps_per_epoch):
            firsts = [(step * r.accum_steps + m) * r.batch_size + dist.rank() * per_rank for m in range(r.accum_steps)]
            steps.append(order[firsts[0]:firsts[0] + per_rank] if r.accum_steps == 1 else
                         torch.cat([order[f:f + per_rank] for f in firsts]))
        with self.data.train.prefetch([part for idx in steps for part in idx.chunk(r.accum_steps)]):  # step's forwards
            for step, idx in enumerate(steps):
                loss, logits = self.step(idx)
                losses[step], grad_norms[step] = loss, self.grad_norm
                if logits is not None:
                    has_logits = True
                    correct += (logits.argmax(dim=1) == self.data.train.labels[idx]).sum()
                if (step + 1) % check_every == 0 or step + 1 == self.steps_per_epoch:
                    check_divergence(losses[:step + 1], grad_norms[:step + 1], epoch, run_name,
                                     fp16=self.scaler.is_enabled(), advice=self.task.divergence_advice)
                bar.update(1)
        self._check_weights(epoch, run_name)
        losses = dist.sum_over_ranks(losses) / dist.world_size()  # the mean of the ranks' losses
        entry = {"epoch": epoch + 1, "loss": losses.mean().item()}
        if has_logits:
            seen = self.steps_per_epoch * r.batch_size * r.accum_steps
            entry["train_acc"] = 100.0 * dist.sum_over_ranks(correct).item() / seen
        entry["lr"] = self.scheduler.get_last_lr()[0]
        return {**entry, **self.task.log_entry(), "seconds": round(time.time() - start, 3)}


    def _check_weights(self, epoch: int, run_name: str):
        """``DivergenceError`` if a trainable weight is non-finite or past ``WEIGHT_BOUND`` (before any save)."""
        params = [p.detach() for p in self.task.parameters()]
        largest = torch.stack(torch._foreach_norm(params, float("inf"))).max().item()
        if not math.isfinite(largest) or largest > WEIGHT_BOUND:
            raise DivergenceError(f"{run_name}: a weight became {largest:.4g} (bound {WEIGHT_BOUND:g}) in epoch "
                                  f"{epoch + 1}; training stopped before the epoch was saved; {self.task.divergence_advice}")


def check_divergence(losses: torch.Tensor, grad_norms: torch.Tensor, epoch: int, run_name: str,
                     fp16: bool = False, advice: str = DIVERGENCE_ADVICE) -> None:
    """``DivergenceError`` at the first step whose loss or gradient norm is non-finite or past its bound.

    ``losses`` and ``grad_norms`` are the epoch's steps so far; under fp16 (``fp16``) a non-finite
    gradient is the grad scaler's business (it skips that step). ``advice`` ends the message: what
    to change, from the run's task (``Task.divergence_advice``).
    """
    bad_loss = ~torch.isfinite(losses) | (losses.abs() > LOSS_BOUND)
    finite_grad = torch.isfinite(grad_norms)
    bad_grad = finite_grad & (grad_norms > GRAD_NORM_BOUND)
    if not fp16:
        bad_grad |= ~finite_grad
    bad = bad_loss | bad_grad
    if not bool(bad.any()):
        return
    step = int(bad.nonzero()[0])
    if bool(bad_loss[step]):
        value = losses[step].item()
        what = f"the loss became {value:.4g}" + (f" (bound {LOSS_BOUND:g})" if math.isfinite(value) else "")
    else:
        value = grad_norms[step].item()
        what = f"the gradient norm became {value:.4g}" + (f" (bound {GRAD_NORM_BOUND:g})" if math.isfinite(value) else "")
    last = f"{losses[step - 1].item():.4f} at step {step}" if step > 0 else "none in this epoch"
    raise DivergenceError(f"{run_name}: {what} at epoch {epoch + 1}, step {step + 1} (last good loss {last}); "
                          f"training stopped; {advice}")


def _checkpoint_status(run_name: str, saved_epoch: int) -> str:
    """Whether a good checkpoint of this run exists, and where, for a divergence message."""
    path = checkpoint_path(run_name)
    if saved_epoch:
        return f"the last good checkpoint {path} (epoch {saved_epoch}) is kept, and a rerun resumes from it"
    if path.exists():
        return f"no epoch of this run was saved; {path} still holds the run it was to replace"
    return f"no checkpoint of this run exists yet ({path}), so a rerun starts from the beginning"


def fit(cfg, run_name: str, data: Data, device, force_retrain: bool = False, teacher=None,
        inputs: dict | None = None, fast: bool | str = "auto") -> dict:
    """Train one single-seed run (or load it from the store), evaluate it, and return its results.

    A complete cached checkpoint with an equal config and ``inputs`` (the fingerprints of what the run
    reads, ``desupcon.engine.runs.check_inputs``; saved as its ``"lineage"``) is reused, its training log
    rewritten if it went missing; a partial one is resumed exactly (its log records each resume: the
    epoch and the fingerprint of the weights it resumed from); one trained with another config or from
    other inputs raises ``StaleRunError``. A divergence raises
    ``DivergenceError`` saying whether a good checkpoint exists and where; nothing diverged is saved.
    ``fast`` is the ``Trainer``'s (default: "auto").
    """

    ckpt = cached_checkpoint(cfg, run_name, force_retrain, inputs)
    path = checkpoint_path(run_name)
    if ckpt is not None and ckpt["complete"]:
        if dist.is_main():
            print(f"[cache] {run_name}: loaded {path}")
            _restore_log(cfg, run_name, ckpt)
        return ckpt["results"]
    trainer = Trainer(cfg, data, device, teacher, fast=fast)
    history, identity = [], {"lineage": inputs or {}, "resumes": []}
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        history = ckpt["history"]
        identity["resumes"] = ckpt.get("resumes", []) + [{"epoch": ckpt["epoch"],
                                                            "fingerprint": content_hash(ckpt["model"])}]
        if dist.is_main():
            print(f"[resume] {run_name}: from epoch {ckpt['epoch']} of {trainer.recipe.epochs} ({path})")
    trainer.task.announce()
    r, saved_epoch = trainer.recipe, len(history)
    live = EpochWriter(run_name, first_epoch=len(history)) if dist.is_main() else None
    bar = tqdm(total=trainer.total_steps, initial=len(history) * trainer.steps_per_epoch, desc=run_name,
               disable=not dist.is_main(), mininterval=1.0)
    try:
        for epoch in range(len(history), r.epochs):
            last = {k: f"{history[-1][k]:.3f}" for k in ("loss", "train_acc") if history and k in history[-1]}
            bar.set_postfix({"epoch": f"{epoch + 1}/{r.epochs}", **last}, refresh=False)  # the epoch in progress
            history.append(trainer.epoch(epoch, run_name, bar))
            if live is not None:
                live.add(history[-1])
            if (epoch + 1) % r.checkpoint_every == 0 or epoch + 1 == r.epochs:
                _save(cfg, run_name, trainer, history, identity, complete=False)
                saved_epoch = len(history)
            elif dist.is_main():
                _write_log(cfg, run_name, history, identity, complete=False)
        bar.close()
        results = evaluate_run(cfg, trainer.task.encoder(), data.evaluation, history, run_name) if dist.is_main() else None
    except DivergenceError as err:
        raise DivergenceError(f"{err}; {_checkpoint_status(run_name, saved_epoch)}") from None
    except KeyboardInterrupt:
        if dist.is_main():
            print(f"\n[interrupted] {run_name}: {_checkpoint_status(run_name, saved_epoch)}", flush=True)
        raise
    finally:
        bar.close()  # an error message starts on a line of its own
        if live is not None:
            live.close()
    _save(cfg, run_name, trainer, history, identity, complete=True, results=results)
    results = dist.broadcast_object(results)  # the other ranks wait here for rank 0's evaluation and checkpoint
    if dist.is_main():
        print(f"[done] {run_name}: test acc {results['test_acc']:.2f}% | checkpoint {path} | log {log_path(run_name)}")
    return results


def _save(cfg, run_name: str, trainer: Trainer, history: list, identity: dict, complete: bool,
          results: dict | None = None):
    """Checkpoint and JSON log of the run, written by rank 0 (every rank calls it: see ``Trainer.state_dict``).

    ``identity``: ``{"lineage": the run's input fingerprints, "resumes": [{"epoch", "fingerprint"}, ...]}``.

    A run that keeps snapshots links each epoch checkpoint to ``pth_models/<run>/epoch_<E>.pth``.
    """
    trainer_state = trainer.state_dict()
    if not dist.is_main():
        return
    state = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "run_name": run_name, "complete": complete,
             "epoch": len(history), "history": history, "num_classes": trainer.data.train.num_classes,
             **identity, **trainer_state}
    if results is not None:
        state["results"] = results
    path = atomic_save(state, checkpoint_path(run_name))
    if trainer.recipe.snapshots and not complete:
        atomic_link(path, snapshot_path(run_name, len(history)))
    _write_log(cfg, run_name, history, identity, complete, results)


def _write_log(cfg, run_name: str, history: list, identity: dict, complete: bool, results: dict | None = None):
    atomic_write_json({"run_name": run_name, "config": cfg.to_dict(), "complete": complete, "epochs": history,
                       "results": results, **identity}, log_path(run_name))


def _restore_log(cfg, run_name: str, ckpt: dict):
    """Rewrite a cached run's training log from its checkpoint if the log is missing or damaged."""
    path = log_path(run_name)
    try:
        read_json(path)
        return
    except FileNotFoundError:
        problem = "missing"
    except CheckpointError as err:
        problem = f"damaged ({str(err).split(';')[0].removeprefix(str(path)).strip()})"
    identity = {"lineage": ckpt.get("lineage") or {}, "resumes": ckpt.get("resumes", [])}
    _write_log(cfg, run_name, ckpt["history"], identity, True, ckpt["results"])
    print(f"[cache] {run_name}: its training log {path} was {problem}; rewritten from the checkpoint")
