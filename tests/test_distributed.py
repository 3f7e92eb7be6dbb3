"""DDP with two processes equals one process on the concatenated batch.

Two ranks each step on their half of a 16-image global batch; one process steps on all 16. For
every method (contrastive ones with and without a memory bank), the mean of the ranks' losses
equals the one-process loss, the DDP-averaged gradients of the student and of the adapting teacher
head equal the one-process gradients, and the memory bank is the same on both ranks and in the one
process. The real ``Trainer`` runs both; ``augment="none"`` gives both the same views. A resumed
rank gets its own augmentation stream back from rank 0's checkpoint. MoCo-v3 (symmetric loss with
keys gathered from every rank, a negative queue, the momentum update) passes the same comparison,
and a 2-rank MoCo-v3 pretraining through ``desupcon.study.train.train`` stopped after its first epoch and
relaunched ends with the same weights, bit for bit, as the uninterrupted 2-rank run (each rank gets
its own augmentation stream back).

On CPUs (gloo) the networks run in eval mode, whose BatchNorm is per image: PyTorch's SyncBatchNorm,
which the Trainer uses under DDP, has no CPU kernel. With two GPUs (NCCL) they run in train mode and
the comparison covers SyncBatchNorm too.
"""

import contextlib
import functools
import io
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from desupcon.core import distributed as dist
from desupcon.core.artefacts import load_checkpoint
from desupcon.core.paths import checkpoint_path, snapshot_path
from desupcon.images.augment import normalize
from desupcon.images.datasets import Data, ImageDataset, load_splits
from desupcon.engine import trainer as engine
from desupcon.engine.trainer import Trainer
from desupcon.methods.ssl.base import build_model
from desupcon.methods.ssl.config import load_config
from desupcon.nn.models import ModelWrapper
from desupcon.study.profiles import PROFILES
from desupcon.study.train import train

MOCO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "moco_v3_smoke.yaml"
WORLD, BATCH, STEPS = 2, 16, 2  # BATCH is the global batch: BATCH // WORLD images per rank and step
CASES = {  # name: (method, config changes)
    "supcon": ("supcon", {}),
    "crd": ("crd", {}),
    "lw_supcrd": ("lw_supcrd", {}),
    "hybrid": ("hybrid", {}),
    "crd_bank": ("crd", {"bank_k": 64}),
    "lw_supcrd_bank": ("lw_supcrd", {"bank_k": 64}),
    "lw_supcrd_bank_samelabelpos": ("lw_supcrd", {"bank_k": 64, "bank_positives": True}),
    "projection": ("projection", {}),
    "undistilled": ("undistilled", {}),
    "kd": ("kd", {}),
}
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # ranks are processes; a core for each
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    torch.cuda.device_count() < WORLD, reason=f"SyncBatchNorm under NCCL needs {WORLD} GPUs"))]


def _config(method: str, **changes):
    """A tiny run of ``method`` (width 4, 8-d projections) whose views are the unaugmented images."""
    tiny = dict(width=4, proj_dim=8, batch_size=BATCH, augment="none", **changes)
    if method == "projection":
        return PROFILES["smoke"].projection_config().replace(arch="resnet18", **tiny)
    return PROFILES["smoke"].student_config(method, **tiny)


def _teacher(device) -> ModelWrapper:
    """A random tiny teacher with a linear 8-d head (the comparison needs no trained one)."""
    torch.manual_seed(0)
    return ModelWrapper(10, "resnet18", width=4, proj_dim=8, projection="linear").to(device).eval()


@functools.cache
def _data(device: str) -> Data:
    return Data.load("digits", device)


def _batches(device: str) -> torch.Tensor:
    """(STEPS, BATCH) dataset indices: the global batch of each step."""
    order = torch.randperm(len(_data(device).train), generator=torch.Generator().manual_seed(0))
    return order[:STEPS * BATCH].view(STEPS, BATCH).to(device)


def _steps(method: str, changes: dict, device: str, batches: torch.Tensor) -> dict:
    """``STEPS`` Trainer steps on this process's images ``batches`` (STEPS, B): losses, gradients, bank."""
    trainer = Trainer(_config(method, **changes), _data(device), device, _teacher(device), fast=False)
    trainer.model.train(device != "cpu")  # see the module docstring
    named = list(trainer.model.named_parameters())
    if trainer.task.teacher is not None:
        named += [(f"teacher.head.{name}", p) for name, p in trainer.task.teacher.head.named_parameters()]
    out = {"loss": [], "grads": []}
    for idx in batches:
        loss, _ = trainer.step(idx)
        out["loss"].append(loss.cpu())
        out["grads"].append({name: p.grad.cpu() for name, p in named if p.grad is not None})
    out["bank"] = None if trainer.task.bank is None else trainer.task.bank.feats.cpu()
    return out


def _moco_steps(device: str, batches: torch.Tensor) -> dict:
    """``STEPS`` MoCo-v3 steps (tiny ResNet-18, queue of 4 global batches) on this process's images."""
    cfg = load_config(MOCO_CONFIG, [f"train.batch_size={BATCH}", f"train.queue_size={4 * BATCH}",
                                         "model.width=4", "model.proj_hidden=32", "model.pred_hidden=32",
                                         "model.proj_dim=8"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    model.train(device != "cpu")  # see the module docstring
    ddp = dist.wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = _data(device).train
    out = {"loss": [], "grads": []}
    for idx in batches:
        x = normalize(data.images[idx], data.mean, data.std)  # (B/W, C, H, W)
        loss = ddp(x, x.flip(3), cfg.train.momentum)  # the two views: the images and their mirror images
        optimizer.zero_grad()
        loss.backward()
        out["loss"].append(loss.detach().cpu())
        out["grads"].append({name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None})
        optimizer.step()
    out["bank"] = model.queue.keys.cpu()  # every rank enqueued the whole step's keys
    return out


def _augmentation_streams(device: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's augmentation RNG state after a step, and the state a new Trainer resumes from rank 0's
    checkpoint of it."""
    trainer, resumed = (Trainer(_config("supcon"), _data(device), device, None, fast=False) for _ in range(2))
    trainer.step(idx)
    resumed.load_state_dict(dist.broadcast_object(trainer.state_dict()))
    return trainer.aug_gen.get_state(), resumed.aug_gen.get_state()


def _rank_main(rank: int, port: int, device_type: str, out_dir: str):
    """One DDP rank, started the way torchrun starts it (environment variables + ``init_from_env``)."""
    _init_rank(rank, port, cpu=device_type == "cpu")
    device = "cpu" if device_type == "cpu" else f"cuda:{rank}"
    per_rank = BATCH // WORLD
    batches = _batches(device)[:, rank * per_rank:(rank + 1) * per_rank]  # (STEPS, B/W)
    results = {"cases": {name: _steps(method, changes, device, batches) for name, (method, changes) in CASES.items()},
               "moco": _moco_steps(device, batches), "augmentation": _augmentation_streams(device, batches[0])}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _init_rank(rank: int, port: int, cpu: bool):
    """The environment torchrun gives rank ``rank``, then ``init_from_env`` (gloo where the ranks run on CPUs)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    if cpu:  # init_from_env picks NCCL whenever a GPU is visible
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.set_num_threads(1)
    dist.init_from_env()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=DEVICES)
def ddp(request, tmp_path_factory):
    """``(device type, [results of rank 0, results of rank 1])`` from one DDP launch (see ``_rank_main``)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    out = tmp_path_factory.mktemp(f"ddp_{request.param}")
    mp.spawn(_rank_main, args=(_free_port(), request.param, str(out)), nprocs=WORLD)
    return request.param, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _assert_same_as_one_process(ranks: list[dict], single: dict):
    """The mean of the ranks' losses, every rank's (DDP-averaged) gradients and the bank or queue
    equal those of one process on the whole batch, step by step."""
    for step in range(STEPS):
        torch.testing.assert_close(sum(r["loss"][step] for r in ranks) / WORLD, single["loss"][step],
                                   rtol=1e-5, atol=1e-6)
        for r in ranks:
            assert r["grads"][step].keys() == single["grads"][step].keys()
            for name, grad in single["grads"][step].items():
                torch.testing.assert_close(r["grads"][step][name], grad, rtol=1e-4, atol=1e-5,
                                           msg=lambda m: f"step {step + 1}, gradient of {name}: {m}")
    if single["bank"] is not None:  # every rank drew the same slots and applied the whole batch's update
        assert torch.equal(ranks[0]["bank"], ranks[1]["bank"])
        torch.testing.assert_close(ranks[0]["bank"], single["bank"])


@pytest.mark.parametrize("case", CASES)
def test_ddp_step_equals_one_process_on_the_whole_batch(ddp, case):
    device_type, ranks = ddp
    device = "cpu" if device_type == "cpu" else "cuda:0"
    _assert_same_as_one_process([r["cases"][case] for r in ranks], _steps(*CASES[case], device, _batches(device)))


def test_ddp_moco_v3_step_equals_one_process_on_the_whole_batch(ddp):
    device_type, ranks = ddp
    device = "cpu" if device_type == "cpu" else "cuda:0"
    _assert_same_as_one_process([r["moco"] for r in ranks], _moco_steps(device, _batches(device)))


def test_resume_gives_each_rank_its_augmentation_stream_back(ddp):
    _, ranks = ddp
    for r in ranks:
        saved, resumed = r["augmentation"]
        assert torch.equal(resumed, saved)
    assert not torch.equal(ranks[0]["augmentation"][0], ranks[1]["augmentation"][0])  # distinct streams


# --- MoCo-v3 pretraining under DDP: stopped after epoch 1, relaunched, bit-identical to the uninterrupted run

MOCO_RESUME = [f"train.batch_size={BATCH}", f"train.queue_size={4 * BATCH}", "train.epochs=2", "model.width=4",
               "model.proj_hidden=32", "model.pred_hidden=32", "model.proj_dim=8", "eval.knn_k=20",
               "eval.probe_iterations=1"]


class _Stopped(Exception):
    """Raised by a rank right after its first epoch checkpoint, as if the job had been killed there."""


def _moco_data() -> Data:
    """128 training images (8 steps of 16 per epoch) and 64 test images of the digits, on the CPU."""
    first = lambda ds, n: ImageDataset(ds.name, ds.images[:n].clone(), ds.labels[:n].clone(), ds.num_classes,
                                       ds.mean, ds.std)
    tr, te = load_splits("digits")
    return Data(first(tr, 128), first(te, 64))


def _moco_rank_main(rank: int, port: int, home: str, stop_after_first_save: bool, out_dir: str):
    """One DDP rank of ``train(cfg)`` for the MoCo-v3 smoke config, optionally stopped after epoch 1."""
    _init_rank(rank, port, cpu=True)
    os.environ["DESUPCON_HOME"] = home
    cfg = load_config(MOCO_CONFIG, MOCO_RESUME)
    stopped = False
    if stop_after_first_save:
        save = engine._save

        def save_then_stop(*args, **kwargs):  # every rank takes part in the save, then every rank stops
            save(*args, **kwargs)
            raise _Stopped

        engine._save = save_then_stop
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            train(cfg, data=_moco_data(), device="cpu")
        except _Stopped:
            stopped = True
    torch.save({"stdout": out.getvalue(), "stopped": stopped}, os.path.join(out_dir, f"rank{rank}.pt"))


def _launch_moco(home: Path, stop_after_first_save: bool, out: Path) -> list[dict]:
    out.mkdir()
    mp.spawn(_moco_rank_main, args=(_free_port(), str(home), stop_after_first_save, str(out)), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_ddp_moco_v3_resume_after_epoch_1_is_bit_identical(tmp_path, monkeypatch):
    cfg = load_config(MOCO_CONFIG, MOCO_RESUME)
    name = cfg.name
    uninterrupted_home, resumed_home = tmp_path / "uninterrupted", tmp_path / "resumed"
    full = _launch_moco(uninterrupted_home, False, tmp_path / "full")
    assert not any(r["stopped"] for r in full)
    first = _launch_moco(resumed_home, True, tmp_path / "first")
    assert all(r["stopped"] for r in first)  # both ranks stopped right after the epoch-1 checkpoint
    monkeypatch.setenv("DESUPCON_HOME", str(resumed_home))
    stopped_at = load_checkpoint(checkpoint_path(name))
    assert stopped_at["epoch"] == 1 and not stopped_at["complete"]
    second = _launch_moco(resumed_home, False, tmp_path / "second")
    assert f"[resume] {name}: from epoch 1 of 2" in second[0]["stdout"], second[0]["stdout"]
    assert not any(r["stopped"] for r in second)
    resumed = load_checkpoint(checkpoint_path(name))

    monkeypatch.setenv("DESUPCON_HOME", str(uninterrupted_home))
    reference, reference_epoch1 = load_checkpoint(checkpoint_path(name)), load_checkpoint(snapshot_path(name, 1))
    assert reference["complete"] and resumed["complete"] and resumed["epoch"] == reference["epoch"] == 2
    assert resumed["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():  # weights, momentum encoder and queue: bit-identical
        assert torch.equal(resumed["model"][key], value), f"model[{key!r}] differs after the resume"
    assert [e["loss"] for e in resumed["history"]] == [e["loss"] for e in reference["history"]]
    for ckpt in (stopped_at, reference_epoch1, reference):  # one augmentation stream per rank, each its own
        aug = ckpt["rng"]["aug"]
        assert aug.shape[0] == WORLD and not torch.equal(aug[0], aug[1])
    assert torch.equal(stopped_at["rng"]["aug"], reference_epoch1["rng"]["aug"])
    assert torch.equal(resumed["rng"]["aug"], reference["rng"]["aug"])
