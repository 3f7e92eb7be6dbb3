"""A teacher's weights file (``model.teacher_weights``) loads strictly, or is refused with one line.

Real files written the way a user gets them: a timm state dict (with or without the ImageNet head),
a training checkpoint that wraps it (``state_dict``, ``module.``), a safetensors file, a file of
another architecture, a ViT made at another image size, and files cut short, overwritten with
garbage, emptied or bit-rotted. Models are timm's tiny ``test_vit`` / ``test_resnet`` (or a one-block
ViT-S/16), so nothing is downloaded and every test takes well under a second.
"""

from pathlib import Path

import pytest
import torch

from desupcon.__main__ import main
from desupcon.core.errors import CheckpointError, ConfigError
from desupcon.methods.ssl import vit_kd
from desupcon.methods.ssl.config import load_config
from desupcon.nn.models import timm_backbone

from test_faults import flip_bytes_in_largest_record
from test_reliability import RunsAShellCommand

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "moco_v3_smoke.yaml"
KD = ["method=vit_kd", "model.teacher_name=test_vit", "model.teacher_img_size=32", "train.queue_size=0"]
HUB = "https://huggingface.co/timm/test_vit.r160_in1k"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def teacher(path) -> torch.nn.Module:
    """The pretrained KD teacher of the smoke config with ``model.teacher_weights`` = ``path``."""
    return vit_kd.build_teacher(load_config(SMOKE, [*KD, f"model.teacher_weights={path}"]).model)


def refusal(error, path) -> str:
    """The message of loading the teacher from ``path``, checked to be one line of class ``error``."""
    with pytest.raises(error) as err:
        teacher(path)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and f"weights file '{path}' (model.teacher_weights)" in message, message
    return message


@pytest.fixture(scope="module")
def vit():
    """A random ``test_vit`` for 32 px with timm's ImageNet head: a state dict as timm's release ships it."""
    torch.manual_seed(5)
    return timm.create_model("test_vit", img_size=32).eval()


def assert_loaded(loaded, state):
    """Every tensor of ``loaded`` equals the same-named one of ``state`` (the head aside)."""
    own = loaded.state_dict()
    assert own.keys() == {k for k in state if not k.startswith("head.")}
    assert all(torch.equal(own[k], state[k]) for k in own)


def test_a_file_of_another_architecture_is_refused_with_the_counts_and_the_fix(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    message = refusal(ConfigError, path)
    assert message == (f"weights file '{path}' (model.teacher_weights) does not hold test_vit weights "
                       f"(model.teacher_name): of the model's 78 tensors 78 are missing from the file (e.g. "
                       f"'cls_token'), 0 have another shape, and 90 of the 90 in the file are unexpected (e.g. "
                       f"'conv1.0.weight'); put the test_vit weights there (from {HUB}), or set model.teacher_name "
                       f"to the architecture the file was made for")


def test_a_vit_of_another_width_names_a_tensor_of_another_shape(tmp_path):
    path = tmp_path / "narrow_vit.pth"
    torch.save(timm.create_model("test_vit", img_size=32, embed_dim=32, num_classes=0).state_dict(), path)
    message = refusal(ConfigError, path)
    assert ("of the model's 78 tensors 0 are missing from the file, 78 have another shape (e.g. 'cls_token': "
            "(1, 1, 32) in the file, (1, 1, 64) in the model), and 0 of the 78 in the file are unexpected") in message


def test_a_file_missing_one_tensor_is_refused(tmp_path, vit):
    path = tmp_path / "cut_down.pth"
    torch.save({k: v for k, v in vit.state_dict().items() if k != "norm.bias"}, path)
    assert "1 are missing from the file (e.g. 'norm.bias')" in refusal(ConfigError, path)


@pytest.mark.parametrize("form", ["timm", "safetensors", "training checkpoint"])
def test_the_right_file_loads_and_holds_the_files_weights(tmp_path, vit, form):
    state = vit.state_dict()
    if form == "timm":
        path = tmp_path / "test_vit.pth"
        torch.save(state, path)
    elif form == "safetensors":
        path = tmp_path / "test_vit.safetensors"
        safetensors_torch.save_file(state, path)
    else:  # a DDP training script's checkpoint: the weights under 'state_dict', keys prefixed 'module.'
        path = tmp_path / "checkpoint.pth"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = teacher(path)
    assert_loaded(loaded, state)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_vit_small_weights_made_at_224_load_into_a_96_px_vit(tmp_path):
    """timm's ViT filter resamples the position embedding (197 tokens -> 37) as its own loader does."""
    torch.manual_seed(6)
    made = timm.create_model("vit_small_patch16_224", depth=1, num_classes=0)
    path = tmp_path / "vit_small_224.pth"
    torch.save(made.state_dict(), path)
    loaded, dim = timm_backbone("vit_small_patch16_224", 96, pretrained=True, weights=str(path), depth=1)
    state = made.state_dict()
    expected = timm.layers.resample_abs_pos_embed(state["pos_embed"], new_size=(6, 6), num_prefix_tokens=1)
    assert dim == 384 and loaded.pos_embed.shape == (1, 37, 384)
    torch.testing.assert_close(loaded.pos_embed, expected)
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items() if k != "pos_embed")


def test_the_original_dinov2_release_loads_into_a_224_px_teacher(tmp_path):
    """facebookresearch/dinov2's files hold a ``mask_token`` and a 518 px (37 x 37) position embedding."""
    torch.manual_seed(7)
    made = timm.create_model("vit_small_patch14_dinov2", depth=1, num_classes=0)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save({**made.state_dict(), "mask_token": torch.zeros(1, 384)}, path)
    loaded, _ = timm_backbone("vit_small_patch14_dinov2", 224, pretrained=True, weights=str(path), depth=1)
    assert made.pos_embed.shape == (1, 1370, 384) and loaded.pos_embed.shape == (1, 257, 384)
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, made.blocks[0].attn.qkv.weight)


def damage(path: Path, how: str) -> None:
    """Damage the weights file ``path`` as a bad copy or disk would."""
    data = path.read_bytes()
    if how == "cut in half":
        path.write_bytes(data[:len(data) // 2])
    elif how == "garbage":
        path.write_bytes(bytes(range(7, 247)) * 40)
    elif how == "empty":
        path.write_bytes(b"")
    else:  # bit rot
        flip_bytes_in_largest_record(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("how", ["cut in half", "garbage", "empty", "bit rot"])
def test_a_damaged_file_is_one_line_naming_it_and_the_fix(tmp_path, vit, how, suffix):
    if how == "bit rot" and suffix == ".safetensors":
        pytest.skip("a safetensors file has no checksum: a flipped byte in a tensor is undetectable")
    path = tmp_path / f"test_vit{suffix}"
    (torch.save if suffix == ".pth" else safetensors_torch.save_file)(vit.state_dict(), path)
    damage(path, how)
    message = refusal(CheckpointError, path)
    kind = "is damaged: its record" if how == "bit rot" else "is truncated or corrupted"
    assert message.startswith(f"weights file '{path}' (model.teacher_weights) {kind}"), message
    assert message.endswith(f"download the test_vit weights again (from {HUB}), or set model.teacher_weights: '' "
                            f"to fetch them from the hub"), message


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "log.pth"
    torch.save({"epoch": 3, "loss": 0.5}, path)
    assert "holds no state dict of tensors (keys ['epoch', 'loss'])" in refusal(CheckpointError, path)


def test_a_file_carrying_code_is_refused_and_never_run(tmp_path, vit):
    path, marker = tmp_path / "test_vit.pth", tmp_path / "PWNED"
    torch.save({**vit.state_dict(), "x": RunsAShellCommand(marker)}, path)
    message = refusal(CheckpointError, path)
    assert "refused by the safe loader (torch.load with weights_only=True): it carries code" in message, message
    assert "which a weights file never does" in message and not marker.exists()


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    args = ["pretrain", str(SMOKE), "--set", *KD, f"model.teacher_weights={path}", "train.epochs=1",
            "train.warmup_epochs=0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: weights file '{path}' (model.teacher_weights) does not hold test_vit weights")
    assert len(err.splitlines()) == 1, err
