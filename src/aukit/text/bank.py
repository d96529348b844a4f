"""The AU description bank: per-AU natural-language descriptions loaded from a versioned asset.

The asset (``conf/au_descriptions.yaml`` by default, YAML or JSON) looks like::

    version: 1
    generator: {...}            # free-form provenance, not part of the digest
    descriptions:
      AU1: ["AU1, the Inner Brow Raiser, lifts ...", ...]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aukit.au import ALL_AUS, au_numbers, parse_au
from aukit.configs import CONFIG_DIR

ENV_DESCRIPTIONS = "AUKIT_DESCRIPTIONS"
# shipped with the library (aukit.configs), so found from any folder
DEFAULT_BANK: Path = CONFIG_DIR / "au_descriptions.yaml"


def default_bank_path() -> Path:
    """``$AUKIT_DESCRIPTIONS`` when set, else :data:`DEFAULT_BANK`."""
    override = os.environ.get(ENV_DESCRIPTIONS)
    return Path(override).expanduser() if override else DEFAULT_BANK


def normalize_text(text: str) -> str:
    """Whitespace-collapsed, case-folded text: two descriptions are duplicates when these match."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class DescriptionBank:
    """Descriptions per AU number, in file order; ``source`` is the file they came from."""

    version: int
    descriptions: dict[int, tuple[str, ...]]
    source: Path

    def for_aus(self, aus: Sequence[int]) -> list[list[str]]:
        """The descriptions of each AU in ``aus``, in that order."""
        missing = [f"AU{a}" for a in aus if a not in self.descriptions]
        if missing:
            raise KeyError(f"{self.source}: no descriptions for {', '.join(missing)}; the bank has "
                           f"{', '.join(f'AU{a}' for a in self.descriptions)}")
        return [list(self.descriptions[a]) for a in aus]

    def digest(self) -> str:
        """SHA-256 of the canonical content (version + descriptions): the text-feature cache key."""
        canonical = {"version": self.version,
                     "descriptions": [[au, list(texts)] for au, texts in self.descriptions.items()]}
        blob = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_mapping(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"AU description bank {path} does not exist; pass an existing YAML/JSON file or set "
            f"{ENV_DESCRIPTIONS}=/path/to/au_descriptions.yaml")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"AU description bank {path} is not valid YAML/JSON: {err}") from err
    if not isinstance(data, Mapping) or "descriptions" not in data:
        raise ValueError(f"AU description bank {path} must be a mapping with a 'descriptions' key "
                         "({'AU1': [text, ...], ...}) and a 'version' key")
    return data


def _parse_descriptions(path: Path, raw: Any, min_per_au: int) -> dict[int, tuple[str, ...]]:
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{path}: 'descriptions' must be a non-empty mapping AU -> list of texts")
    parsed: dict[int, tuple[str, ...]] = {}
    for key, texts in raw.items():
        try:
            au = parse_au(key)
        except ValueError as err:
            raise ValueError(f"{path}: bad key {key!r} under 'descriptions': {err}") from err
        if au in parsed:
            raise ValueError(f"{path}: AU{au} is listed twice (as {key!r}); merge the two lists")
        if not isinstance(texts, list):
            raise ValueError(f"{path}: AU{au} must map to a list of strings, "
                             f"got {type(texts).__name__}")
        seen: dict[str, int] = {}
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}: AU{au} description #{i} is empty or not a string "
                                 f"({text!r}); delete it or write a description")
            # repeats would silently up-weight one text when descriptions are sampled per step
            if (first := seen.setdefault(normalize_text(text), i)) != i:
                raise ValueError(f"{path}: AU{au} description #{i} repeats #{first} ({text!r}); "
                                 "delete one of them")
        if len(texts) < min_per_au:
            raise ValueError(f"{path}: AU{au} has {len(texts)} descriptions but at least "
                             f"{min_per_au} are required; add more "
                             "(scripts/extend_descriptions.py)")
        parsed[au] = tuple(" ".join(text.split()) for text in texts)
    return parsed


def load_description_bank(path: str | Path | None = None, aus: Sequence[int | str] | None = None,
                          min_per_au: int = 1) -> DescriptionBank:
    """Load and validate a description bank, optionally keeping only ``aus`` (in that order).

    ``path=None`` reads :func:`default_bank_path`; AU keys may be ``"AU12"``, ``"12"`` or ``12``.
    ``aus`` may also be a dataset name (``"disfa"``); with ``aus=None`` every AU in the file is
    kept, sorted by number. Runs of whitespace inside a description are collapsed to one space.
    """
    path = Path(path).expanduser() if path is not None else default_bank_path()
    data = _read_mapping(path)
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: 'version' must be a positive integer, got {version!r}")
    if isinstance(min_per_au, bool) or not isinstance(min_per_au, int) or min_per_au < 1:
        raise ValueError(f"min_per_au must be a positive integer, got {min_per_au!r}")
    descriptions = _parse_descriptions(path, data["descriptions"], min_per_au)
    if aus is None:
        wanted = [a for a in ALL_AUS if a in descriptions]
    else:
        wanted = list(au_numbers(aus))
        missing = [f"AU{a}" for a in wanted if a not in descriptions]
        if missing:
            raise ValueError(f"{path}: no descriptions for requested {', '.join(missing)}; add "
                             "them to the bank (scripts/extend_descriptions.py --aus ...) or drop "
                             "them from the AU list")
    return DescriptionBank(version=version, descriptions={a: descriptions[a] for a in wanted},
                           source=path)
