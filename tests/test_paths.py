"""``data_root()`` is anchored to the output home, so the CLI (cwd = the repository), a notebook
(cwd = notebooks/) and any other working directory read and download datasets in one place."""

from pathlib import Path

from desupcon.core.paths import data_root

REPO = Path(__file__).resolve().parents[1]


def _from_every_working_directory(monkeypatch, tmp_path) -> set:
    seen = set()
    for cwd in (REPO, REPO / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        seen.add(data_root())
    return seen


def test_the_default_is_the_repository_data_folder_from_any_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("DESUPCON_HOME")
    monkeypatch.delenv("DESUPCON_DATA", raising=False)
    assert _from_every_working_directory(monkeypatch, tmp_path) == {REPO / "data"}


def test_it_follows_the_output_home_from_any_working_directory(monkeypatch, tmp_path, home):
    monkeypatch.delenv("DESUPCON_DATA", raising=False)
    assert _from_every_working_directory(monkeypatch, tmp_path) == {home / "data"}


def test_desupcon_data_overrides_it(monkeypatch, tmp_path, home):
    monkeypatch.setenv("DESUPCON_DATA", str(tmp_path / "datasets"))
    assert data_root() == tmp_path / "datasets"
    monkeypatch.setenv("DESUPCON_DATA", "shared/datasets")  # relative: against the output home, not the cwd
    for cwd in (REPO, tmp_path):
        monkeypatch.chdir(cwd)
        assert data_root() == home / "shared" / "datasets"
