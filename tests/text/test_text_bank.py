"""The AU description bank asset, its loader and validation, and the extend script's merge logic."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from aukit.au import ALL_AUS, DATASET_AUS
from aukit.text.bank import DEFAULT_BANK, load_description_bank, normalize_text

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "extend_descriptions", REPO / "scripts" / "extend_descriptions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extend = _load_script()


def write_bank(folder: Path, descriptions: dict, version: int = 1, name: str = "bank.yaml") -> Path:
    path = folder / name
    data = {"version": version, "descriptions": descriptions}
    path.write_text(json.dumps(data) if path.suffix == ".json" else yaml.safe_dump(data))
    return path


SMALL = {"AU1": ["inner brow up", "brows oblique"], "AU12": ["smile", "lip corners up", "grin"]}


def test_shipped_bank_covers_every_au_with_20_unique_descriptions():
    assert DEFAULT_BANK == REPO / "conf" / "au_descriptions.yaml"
    bank = load_description_bank(min_per_au=20)
    assert bank.version >= 1 and tuple(bank.descriptions) == ALL_AUS
    for au, texts in bank.descriptions.items():
        assert len({normalize_text(t) for t in texts}) == len(texts) >= 20, f"AU{au}"
        assert all(t.strip() and len(t.split()) <= 60 for t in texts), f"AU{au}"
    raw = yaml.safe_load(DEFAULT_BANK.read_text())
    assert "hand-written" in raw["generator"]["method"]


def test_shipped_bank_records_the_extend_script_prompt_template():
    raw = yaml.safe_load(DEFAULT_BANK.read_text())
    assert raw["generator"]["prompt_template"] == extend.PROMPT_TEMPLATE


def test_subset_order_keys_and_dataset_names(tmp_path):
    path = write_bank(tmp_path, {"12": SMALL["AU12"], "AU1": SMALL["AU1"]})
    bank = load_description_bank(path, aus=["AU12", 1])
    assert list(bank.descriptions) == [12, 1]
    assert bank.for_aus([1, 12]) == [SMALL["AU1"], SMALL["AU12"]]
    assert list(load_description_bank(path).descriptions) == [1, 12]  # sorted by number
    disfa = load_description_bank(aus="disfa")
    assert tuple(disfa.descriptions) == DATASET_AUS["disfa"]
    with pytest.raises(KeyError, match="AU26"):
        bank.for_aus([26])


def test_json_bank_equals_yaml_bank(tmp_path):
    from_yaml = load_description_bank(write_bank(tmp_path, SMALL))
    from_json = load_description_bank(write_bank(tmp_path, SMALL, name="bank.json"))
    assert from_json.descriptions == from_yaml.descriptions
    assert from_json.digest() == from_yaml.digest()


def test_env_var_overrides_default_bank(tmp_path, monkeypatch):
    path = write_bank(tmp_path, SMALL)
    monkeypatch.setenv("AUKIT_DESCRIPTIONS", str(path))
    assert load_description_bank().source == path


def test_digest_is_stable_and_tracks_content(tmp_path):
    digest = load_description_bank(write_bank(tmp_path, SMALL)).digest()
    assert load_description_bank(write_bank(tmp_path, SMALL)).digest() == digest
    assert len(digest) == 64
    changed = {**SMALL, "AU12": ["smile", "lip corners up", "broad grin"]}
    assert load_description_bank(write_bank(tmp_path, changed)).digest() != digest
    assert load_description_bank(write_bank(tmp_path, SMALL, version=2)).digest() != digest
    # provenance metadata is not content
    data = {"version": 1, "generator": {"method": "x"}, "descriptions": SMALL}
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump(data))
    assert load_description_bank(tmp_path / "meta.yaml").digest() == digest


@pytest.mark.parametrize(("content", "kwargs", "message"), [
    ("descriptions: [unclosed", {}, "not valid YAML/JSON"),
    ("version: 1\n", {}, "'descriptions' key"),
    (["a list"], {}, "'descriptions' key"),
    ({"version": 1, "descriptions": {"AU3": ["x"]}}, {}, "'AU3'"),
    ({"version": 1, "descriptions": {"AU1": ["ok", ""]}}, {}, r"AU1 description #1 is empty"),
    ({"version": 1, "descriptions": {"AU1": ["ok", "   "]}}, {}, r"AU1 description #1 is empty"),
    ({"version": 1, "descriptions": {"AU1": ["ok", 3]}}, {}, r"AU1 description #1 .*not a string"),
    ({"version": 1, "descriptions": {"AU1": "one text"}}, {}, "AU1 must map to a list"),
    ({"version": 1, "descriptions": {"AU1": ["Smile", "  smile "]}}, {}, "#1 repeats #0"),
    ({"version": 1, "descriptions": {"AU1": ["a"], "1": ["b"]}}, {}, "AU1 is listed twice"),
    ({"version": 1, "descriptions": {"AU1": ["a", "b"]}}, {"min_per_au": 3},
     "AU1 has 2 descriptions but at least 3"),
    ({"version": 1, "descriptions": {"AU1": ["a"]}}, {"aus": ["AU1", "AU26"]},
     "no descriptions for requested AU26"),
    ({"version": "one", "descriptions": {"AU1": ["a"]}}, {}, "'version' must be a positive"),
    ({"version": 1, "descriptions": {}}, {}, "non-empty mapping"),
])
def test_bad_banks_fail_with_a_message_naming_file_and_problem(tmp_path, content, kwargs, message):
    path = tmp_path / "broken.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(ValueError, match=message) as info:
        load_description_bank(path, **kwargs)
    assert "broken.yaml" in str(info.value)


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="AUKIT_DESCRIPTIONS"):
        load_description_bank(tmp_path / "nope.yaml")


def test_unknown_requested_au_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown Action Unit"):
        load_description_bank(write_bank(tmp_path, SMALL), aus=["AU99"])


def test_parse_reply_reads_fenced_json_and_bullet_lists():
    fenced = 'Sure!\n```json\n["Brows go up.", "  Forehead wrinkles. "]\n```'
    assert extend.parse_reply(fenced) == ["Brows go up.", "Forehead wrinkles."]
    bullets = "1. Brows go up.\n- Forehead wrinkles.\n\n* \"Quoted one\""
    assert extend.parse_reply(bullets) == ["Brows go up.", "Forehead wrinkles.", "Quoted one"]


def test_merge_dedupes_drops_long_texts_and_bumps_version(tmp_path):
    raw = {"version": 3, "generator": {"method": "hand"}, "descriptions": {"1": ["Brows up."]}}
    replies = {1: ["brows  UP.", "Inner brows rise.", "Inner brows rise.", "word " * 61],
               12: ["A smile."]}
    merged, added = extend.merge_descriptions(raw, replies, {"model": "fake"})
    assert merged["version"] == 4 and raw["version"] == 3  # input left untouched
    assert merged["descriptions"] == {"AU1": ["Brows up.", "Inner brows rise."],
                                      "AU12": ["A smile."]}
    assert added == {1: 1, 12: 1}
    assert merged["generator"]["extensions"] == [{"model": "fake", "version": 4}]
    out = tmp_path / "out.yaml"
    extend.write_validated(merged, out, header="# header\n")
    assert out.read_text().startswith("# header\n")
    assert load_description_bank(out).version == 4


def test_write_validated_refuses_an_invalid_bank_and_keeps_the_old_file(tmp_path):
    out = write_bank(tmp_path, SMALL)
    before = out.read_text()
    with pytest.raises(ValueError, match="empty"):
        extend.write_validated({"version": 2, "descriptions": {"AU1": [" "]}}, out)
    assert out.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.yaml"]


def test_script_dry_run_prints_prompts_and_calls_nothing(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("dry run must not call the endpoint")

    monkeypatch.setattr(extend, "chat", no_network)
    bank = write_bank(tmp_path, SMALL)
    args = ["--dry-run", "--bank", str(bank), "--aus", "AU1,AU12", "--per-au", "4"]
    assert extend.main(args) == 0
    printed = capsys.readouterr().out
    assert "Write 4 new descriptions of AU12 (Lip Corner Puller)" in printed
    assert "- lip corners up" in printed and "zygomaticus major" in printed


def test_script_end_to_end_with_a_fake_endpoint(tmp_path, monkeypatch):
    replies = iter(['["Brows up at the centre.", "inner brow up"]', "- Cheeks rise with a smile."])
    monkeypatch.setattr(extend, "chat", lambda *args, **kwargs: next(replies))
    bank, out = write_bank(tmp_path, SMALL), tmp_path / "extended.yaml"
    extend.main(["--endpoint", "http://fake/v1", "--model", "m", "--bank", str(bank),
                 "--out", str(out), "--aus", "AU1,AU12"])
    extended = load_description_bank(out)
    assert extended.version == 2
    assert extended.descriptions[1] == (*SMALL["AU1"], "Brows up at the centre.")
    assert extended.descriptions[12][-1] == "Cheeks rise with a smile."
