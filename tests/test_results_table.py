"""The README's results table is the one ``scripts/results_table.py`` makes from the JSON: it
cannot drift from the measured figures."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("results_table",
                                                  ROOT / "scripts" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_generated_from_the_results_json():
    script = _script()
    data = json.loads((ROOT / "docs/results/synthau_benchmark.json").read_text())
    readme = (ROOT / "README.md").read_text()
    block = readme.split(script.START, 1)[1].split(script.END, 1)[0]
    assert block.strip() == script.table(data).strip(), "run `make results-table`"


def test_oracle_rows_are_marked_and_superseded_figures_left_out():
    script = _script()
    data = {"finetune": {"(b) HiVA, scratch": {"0.1": [60.0, 62.0]},
                         "(b) HiVA, scratch [oracle: the renderer's exact landmarks]":
                             {"0.1": [80.0]}},
            "superseded_exact_landmarks": {"finetune": {"(c) old": {"0.1": [99.0]}}}}
    text = script.table(data)
    assert "| (b) HiVA, scratch | 61.0 ± 1.4 (2 seeds) |" in text
    assert "| *(b) HiVA, scratch [oracle: the renderer's exact landmarks]* | 80.0 (1 seed) |" \
        in text
    assert "old" not in text and "99.0" not in text


def test_the_few_label_rows_show_each_conditions_seed_spread():
    text = _script().table({"few_labels": {"(b) HiVA, scratch": [59.0, 59.1, 52.7],
                                           "(c) HiVA, stage-1 init": [57.0]}})
    assert "| (b) HiVA, scratch | 56.9 ± 3.7 (3 seeds) |" in text
    assert "| (c) HiVA, stage-1 init | 57.0 (1 seed) |" in text and "10% labelled" in text
