"""The shipped configs: the repository's ``conf/`` folder, installed with the library as the
package data ``aukit.conf`` (setup.cfg), so every command finds it from any folder.

``resolve_config("trainer/cpu.yaml")`` is the path as given when it exists, else the shipped file
of that name (``conf/trainer/cpu.yaml`` names the same one): ``aukit-finetune fit -c
trainer/cpu.yaml -c finetune/base.yaml ...`` runs anywhere, and a config of your own is read by
its path. The library reads its default data files (the AU description bank, the fold lists)
from :data:`CONFIG_DIR` too.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _config_dir() -> Path:
    here = Path(__file__).resolve().parent
    installed = here / "conf"  # a built wheel (pip install .): aukit/conf
    # an editable install, or src/ on PYTHONPATH: conf/ next to src/ in the source tree
    return installed if installed.is_dir() else here.parents[1] / "conf"


CONFIG_DIR: Path = _config_dir()


def finetune_configs(dataset: str) -> list[str]:
    """The shipped configs a finetuning run on ``dataset`` composes after its trainer config,
    left to right: the shared recipe, the data set, the data set's entry (the Makefile's
    ``finetune`` target writes the same list)."""
    return ["finetune/base.yaml", f"data/{dataset}.yaml", f"finetune/{dataset}.yaml"]


def config_flags(names: list[str]) -> list[str]:
    """The command-line form of configs composed left to right: ``["-c", name, ...]``."""
    return [flag for name in names for flag in ("-c", name)]


def shipped_configs() -> list[str]:
    """The names of the shipped LightningCLI configs, e.g. ``trainer/cpu.yaml``."""
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.glob("*/*.yaml")
                  if p.parent.name != "protocol")


def shipped_config(name: str | Path) -> Path | None:
    """The shipped file ``name`` (``trainer/cpu.yaml`` or ``conf/trainer/cpu.yaml``), or None."""
    parts = Path(name).parts
    if parts[:1] == ("conf",):
        parts = parts[1:]
    if not parts or Path(name).is_absolute() or ".." in parts:
        return None
    path = CONFIG_DIR.joinpath(*parts)
    return path if path.is_file() else None


def resolve_config(value: str) -> str:
    """``value`` when it is an existing path or not a file name at all (jsonargparse also takes
    inline YAML), else the shipped config it names; a config file found in neither place raises
    ``FileNotFoundError`` naming the shipped ones."""
    if Path(value).expanduser().exists() or not value.endswith(CONFIG_SUFFIXES) \
            or "\n" in value:
        return value
    shipped = shipped_config(value)
    if shipped is not None:
        return str(shipped)
    raise FileNotFoundError(
        f"config {value} does not exist here ({Path.cwd()}) nor among the shipped configs in "
        f"{CONFIG_DIR}: {', '.join(shipped_configs())}; give an existing file or one of those "
        "names (-c trainer/cpu.yaml)")
