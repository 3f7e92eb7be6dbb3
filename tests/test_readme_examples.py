"""The README's own-data examples, run as written: a distillation and a MoCo-v3 run on a folder of images."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from desupcon.core.paths import REPOSITORY

MARKER = "<!-- own-data-examples -->"


def readme_commands() -> list[str]:
    """The command lines of the bash block after the marker in README.md."""
    text = (REPOSITORY / "README.md").read_text()
    block = re.search(rf"{re.escape(MARKER)}\n```bash\n(.*?)```", text, re.S)
    assert block, f"README.md has no bash block after {MARKER}"
    return [line for line in block[1].splitlines() if line.strip()]


def test_the_examples_are_desupcon_commands_on_the_photos_folder():
    commands = readme_commands()
    assert len(commands) == 4 and all(c.startswith("python -m desupcon ") for c in commands)
    assert "train kd" in commands[1] and "pretrain" in commands[2] and "evaluate-checkpoints" in commands[3]


@pytest.mark.slow
def test_the_readme_own_data_examples_run_as_written(tmp_path):
    rng = np.random.default_rng(0)
    for label, level in (("cat", 60), ("dog", 190)):  # two classes a network can tell apart
        (tmp_path / "data" / "photos" / label).mkdir(parents=True)
        for i in range(60):
            pixels = np.clip(level + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / "photos" / label / f"{i:03d}.jpg")
    env = {**os.environ, "DESUPCON_HOME": str(tmp_path / "home"), "DESUPCON_DATA": str(tmp_path / "data")}
    env.pop("DESUPCON_PROFILE", None)
    outputs = []
    for command in readme_commands():
        argv = [sys.executable, *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    assert re.search(r"\[data\] prepared \d+ images of .*photos \(train\) at 32x32", outputs[0])
    assert "[done] teacher_resnet50_photos_" in outputs[1] and "[done] student_baseline_kd_T_4.0_resnet18_photos_" in outputs[1]
    results = json.loads((tmp_path / "home" / "json_results" / "comprehensive_results_resnet18_photos.json").read_text())
    assert any(name.startswith("student_baseline_kd_T_4.0_resnet18_photos") for name in results)
    assert "[done] moco_v3_smoke" in outputs[2]
    epochs = re.findall(r"epoch\s+(\d+): k-NN top-1 ([\d.]+)%", outputs[3])
    assert [int(e) for e, _ in epochs] == [0, 2]
