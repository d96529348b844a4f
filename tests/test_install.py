"""The installed shape: setup.cfg lists every package, the library and both stages import from any
folder without PYTHONPATH, every console script answers, and the shipped configs (conf/) are
found by name wherever the command runs."""

import configparser
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from aukit.configs import CONFIG_DIR, resolve_config, shipped_config, shipped_configs
from aukit.data.protocol import default_folds_path
from aukit.text.bank import DEFAULT_BANK

ROOT = Path(__file__).resolve().parents[1]
SETUP = configparser.ConfigParser()
SETUP.read(ROOT / "setup.cfg")
SCRIPTS = [line.split("=")[0].strip()
           for line in SETUP["options.entry_points"]["console_scripts"].strip().splitlines()]


def installed_script(name: str) -> str:
    """The console script ``name`` installed in this environment (setup.cfg's entry points)."""
    path = Path(sysconfig.get_path("scripts")) / name
    assert path.is_file(), f"{path} is missing: install the project (make install)"
    return str(path)


def test_setup_cfg_lists_every_package():
    listed = set(SETUP["options"]["packages"].split())
    library = {".".join(p.parent.relative_to(ROOT / "src").parts)
               for p in (ROOT / "src").rglob("__init__.py")}
    stages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    conf = {"aukit.conf", *(f"aukit.conf.{p.name}" for p in (ROOT / "conf").iterdir()
                            if p.is_dir())}
    assert stages == {"pretrain", "finetune"}
    assert listed == library | stages | conf


def test_the_packages_import_from_any_folder_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import aukit, finetune.cv, pretrain; from aukit.configs import CONFIG_DIR; "
            "print(CONFIG_DIR)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (Path(done.stdout.strip()) / "trainer" / "cpu.yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_answers_from_any_folder(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([installed_script(script), "--help"], cwd=tmp_path, env=env,
                          text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"usage: {script}")


def test_a_config_is_a_path_or_the_name_of_a_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no conf/ here
    cpu = str(CONFIG_DIR / "trainer" / "cpu.yaml")
    assert resolve_config("trainer/cpu.yaml") == cpu
    assert resolve_config("conf/trainer/cpu.yaml") == cpu  # the repository's spelling
    (tmp_path / "mine.yaml").write_text("trainer: {max_epochs: 1}\n")
    assert resolve_config("mine.yaml") == "mine.yaml"
    assert resolve_config("{trainer: {max_epochs: 1}}") == "{trainer: {max_epochs: 1}}"
    with pytest.raises(FileNotFoundError, match="trainer/tpu.yaml does not exist.*trainer/cpu"):
        resolve_config("trainer/tpu.yaml")
    assert shipped_config("../setup.cfg") is None and shipped_config("/etc/hosts") is None
    assert {"trainer/cpu.yaml", "pretrain/synthau.yaml", "finetune/base.yaml",
            "data/synthau.yaml", "finetune/synthau.yaml"} <= set(shipped_configs())


def test_the_library_reads_its_data_files_from_the_shipped_configs(monkeypatch):
    monkeypatch.delenv("AUKIT_FOLDS", raising=False)
    assert DEFAULT_BANK == CONFIG_DIR / "au_descriptions.yaml" and DEFAULT_BANK.is_file()
    assert default_folds_path() == CONFIG_DIR / "protocol" / "folds.yaml"
    assert default_folds_path().is_file()
