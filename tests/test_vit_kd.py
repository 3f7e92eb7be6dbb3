"""The write-up's ``training_mode: kd``: loss, teacher handling, config checks and a smoke run.

Teachers are randomly initialised timm models (timm's tiny ``test_vit``, patch 16); nothing is
downloaded: weights come from files the tests write.
"""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from desupcon.core import artefacts as store
from desupcon.core.errors import ConfigError
from desupcon.core.paths import checkpoint_path, eval_path
from desupcon.methods.ssl import vit_kd
from desupcon.methods.ssl.base import build_backbone, build_model, evaluate_checkpoints
from desupcon.methods.ssl.config import load_config, ssl_methods
from desupcon.study.train import pretrain

timm = pytest.importorskip("timm")

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "moco_v3_smoke.yaml"
KD = ["method=vit_kd", "model.teacher_name=test_vit", "model.teacher_img_size=32", "train.queue_size=0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A random ``test_vit`` saved as a timm state dict, and the teacher it is."""
    torch.manual_seed(3)
    teacher = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    path = tmp_path_factory.mktemp("teacher") / "test_vit.pth"
    torch.save(teacher.state_dict(), path)
    return path, teacher.eval()


def kd_config(*overrides):
    return load_config(SMOKE, [*KD, *overrides])


def test_kd_loss_equals_the_squared_distance_of_normalised_embeddings():
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(16, 8, generator=generator, requires_grad=True)
    t = torch.randn(16, 8, generator=generator)
    loss = vit_kd.kd_cosine_loss(s, t)
    reference = ((s / s.norm(dim=1, keepdim=True) - t / t.norm(dim=1, keepdim=True)) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert vit_kd.kd_cosine_loss(3 * t, t).item() == pytest.approx(0, abs=1e-6)
    assert vit_kd.kd_cosine_loss(-t, t).item() == pytest.approx(4)


def test_the_teacher_is_frozen_outside_the_module_tree_and_moves_with_it(teacher_file):
    path, _ = teacher_file
    model = build_model(kd_config(f"model.teacher_weights={path}"), pretrained_teacher=True)
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert teacher_params and not teacher_params & {id(p) for p in model.parameters()}
    assert all(key.startswith("base_encoder.") for key in model.state_dict())  # checkpoints hold the student only
    model.train()
    assert model.base_encoder.training and not model.teacher.training
    model(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert model.base_encoder.projector[-1].weight.grad is not None
    model.double()
    assert all(p.dtype == torch.float64 for p in model.teacher.parameters())
    projector = model.base_encoder.projector
    assert projector[-1].out_features == model.teacher.num_features == 64  # to the teacher's embedding dim
    assert isinstance(projector[-1], torch.nn.Linear) and len(projector) == 4  # ResNet student: 2 layers, no last BN


def test_teacher_input_is_resized_and_renormalised(teacher_file):
    path, teacher = teacher_file
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    model = build_model(kd_config(f"model.teacher_weights={path}"), pretrained_teacher=True,
                             input_stats=(mean, std)).eval()
    seen = []
    model.teacher.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    x = torch.randn(4, 3, 16, 16)
    pixels = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    t_mean, t_std = (torch.tensor(teacher.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = teacher(F.interpolate((pixels - t_mean) / t_std, size=(32, 32), mode="bicubic", align_corners=False))
    torch.testing.assert_close(model.teacher_embedding(x), F.normalize(expected, dim=1), rtol=1e-4, atol=1e-5)
    assert seen == [torch.Size([4, 3, 32, 32])]


def test_teacher_weights_come_from_the_file(teacher_file):
    path, teacher = teacher_file
    loaded = vit_kd.build_teacher(kd_config(f"model.teacher_weights={path}").model)
    assert loaded.state_dict().keys() == teacher.state_dict().keys()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_a_missing_weights_file_names_it_and_the_fix(tmp_path):
    missing = tmp_path / "dinov2.pth"
    with pytest.raises(FileNotFoundError, match=rf"teacher weights file '{missing}' \(model.teacher_weights\) not "
                                                rf"found: download the test_vit weights there \(from https://"
                                                rf"huggingface.co/timm/test_vit.*\), or set model.teacher_weights: ''"):
        build_model(kd_config(f"model.teacher_weights={missing}"), pretrained_teacher=True)
    build_model(kd_config(f"model.teacher_weights={missing}"))  # a random teacher needs no file


def test_kd_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.teacher_name' = '' must name the teacher of "
                                          r"method 'vit_kd': a timm model such as vit_small_patch14_dinov2"):
        load_config(SMOKE, ["method=vit_kd", "train.queue_size=0"])
    with pytest.raises(ConfigError, match=r"'train.queue_size' = 256 must be 0 for method 'vit_kd'"):
        load_config(SMOKE, KD[:-1])
    with pytest.raises(ConfigError, match=rf"'method' = 'distill': must be one of {re.escape(str(ssl_methods()))}"):
        load_config(SMOKE, ["method=distill"])
    old = tmp_path / "old.yaml"  # a config written before methods were registered tasks
    old.write_text(SMOKE.read_text().replace("method: moco_v3", "").replace("train:\n", "train:\n  training_mode: kd\n"))
    with pytest.raises(ConfigError, match=rf"{old}: 'train.training_mode' is now the top-level key 'method'"):
        load_config(old)
    with pytest.raises(ValueError, match=r"'model.teacher_img_size' = 40 is not a multiple of test_vit's patch size "
                                         r"16: choose e.g. 32 or 48"):
        build_model(kd_config("model.teacher_img_size=40"))


def test_a_timm_vit_student_by_name():
    """The write-up's student_name, as model.backbone: timm's ViT-S/16 built for the run's image size."""
    cfg = kd_config("model.backbone=vit_small_patch16_224", "data.image_size=32")
    backbone, dim = build_backbone(cfg.model, 32, depth=1)  # one block for speed
    assert (type(backbone).__name__, dim, backbone.patch_embed.img_size) == ("VisionTransformer", 384, (32, 32))
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 384)
    assert not any(p.requires_grad for p in backbone.patch_embed.proj.parameters())  # stop_grad_conv1
    with pytest.raises(ValueError, match=r"'data.image_size' = 40 is not a multiple of vit_small_patch16_224's "
                                         r"patch size 16: choose e.g. 32 or 48"):
        build_backbone(cfg.model, 40, depth=1)


@pytest.mark.slow
def test_kd_trains_on_the_smoke_data(teacher_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DESUPCON_HOME", str(tmp_path))
    path, _ = teacher_file
    overrides = [*KD, f"model.teacher_weights={path}", "train.epochs=2", "train.out_dir=kd_smoke",
                 "eval.probe_iterations=5"]
    cfg = load_config(SMOKE, overrides)
    summary = pretrain(cfg)
    losses = [e["loss"] for e in summary["epochs"]]
    assert losses[1] < losses[0] and all("momentum" not in e for e in summary["epochs"])
    ckpt = store.load_checkpoint(checkpoint_path("kd_smoke"))
    assert ckpt["complete"] and {"encoder_q", "proj_q", "model", "optimizer"} <= set(ckpt)
    assert all(key.startswith("base_encoder.") for key in ckpt["model"])  # no teacher weights in it
    assert summary["group"] == "vit_kd_digits" and {"knn_top1", "probe_top1", "probe_top5"} <= set(summary["runs"][0])
    points = evaluate_checkpoints(SMOKE, [0, 2], overrides)
    assert [p["epoch"] for p in points] == [0, 2] and {"knn_top1", "probe_top1", "alignment"} <= set(points[1])
    assert json.loads(eval_path("kd_smoke").read_text())["points"] == points
