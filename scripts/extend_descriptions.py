"""Extend the AU description bank with an LLM behind any OpenAI-compatible chat endpoint.

For each requested AU the model is asked (``PROMPT_TEMPLATE``) for ``--per-au`` new
descriptions; the replies are parsed, stripped of duplicates (case- and whitespace-insensitive,
against the bank and each other), merged, and the result is validated with
``load_description_bank`` before it replaces ``--out``. ``version`` is bumped and the run is
recorded under ``generator.extensions``. Only the standard library talks to the network.

    python scripts/extend_descriptions.py --endpoint https://api.openai.com/v1 \\
        --model gpt-4o-mini --api-key-env OPENAI_API_KEY --per-au 10 --aus AU1,AU12
    python scripts/extend_descriptions.py --dry-run --aus AU4   # print the prompts only
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import re
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from aukit.au import ACTION_UNITS, ALL_AUS, DATASET_AUS, au_numbers, parse_au
from aukit.text.bank import default_bank_path, load_description_bank, normalize_text

# {n}, {key}, {name}, {muscle} and {existing} (one "- text" line per description) are filled in;
# conf/au_descriptions.yaml records this template under generator.prompt_template.
PROMPT_TEMPLATE = """\
You are an expert in the Facial Action Coding System (FACS).
Write {n} new descriptions of {key} ({name}), produced by: {muscle}.
Make them diverse, as different annotators would write them: the muscle, the visible
appearance change, wrinkles and furrows, how it looks at low versus high intensity, the
expressions and emotions it is typically part of, what it is NOT (how it differs from
similar AUs), its FACS name. Mix short and long sentences; each under 60 words. Be
factually correct FACS.
Do not repeat or paraphrase closely any of these existing descriptions:
{existing}
Answer with a JSON list of strings and nothing else."""

MAX_WORDS = 60


def build_prompt(au: int, n: int, existing: Sequence[str]) -> str:
    unit = ACTION_UNITS[au]
    return PROMPT_TEMPLATE.format(n=n, key=unit.key, name=unit.name, muscle=unit.muscle,
                                  existing="\n".join(f"- {text}" for text in existing) or "(none)")


def parse_reply(content: str) -> list[str]:
    """Descriptions from a model reply: a JSON list (possibly in a code fence), else one per line
    with bullets / numbering removed."""
    start, end = content.find("["), content.rfind("]")
    if 0 <= start < end:
        try:
            items = json.loads(content[start:end + 1])
            if isinstance(items, list):
                return [str(item).strip() for item in items if str(item).strip()]
        except json.JSONDecodeError:
            pass
    lines = (re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", line).strip().strip('"')
             for line in content.splitlines())
    return [line for line in lines if line and not line.startswith("```")]


def merge_descriptions(data: Mapping[str, Any], new: Mapping[int, Sequence[str]],
                       note: Mapping[str, Any]) -> tuple[dict[str, Any], dict[int, int]]:
    """A copy of the bank ``data`` with the ``new`` texts per AU appended (duplicates and texts
    over ``MAX_WORDS`` words dropped), keys written as ``"AU<n>"``, ``version`` bumped and
    ``note`` appended to ``generator.extensions``. Also returns how many texts each AU gained."""
    merged = copy.deepcopy(dict(data))
    descriptions = {f"AU{parse_au(key)}": list(texts)
                    for key, texts in merged.get("descriptions", {}).items()}
    added: dict[int, int] = {}
    for au, texts in new.items():
        current = descriptions.setdefault(f"AU{au}", [])
        seen = {normalize_text(text) for text in current}
        for text in (" ".join(t.split()) for t in texts):
            if text and normalize_text(text) not in seen and len(text.split()) <= MAX_WORDS:
                seen.add(normalize_text(text))
                current.append(text)
                added[au] = added.get(au, 0) + 1
    merged["descriptions"] = descriptions
    merged["version"] = int(merged.get("version", 0)) + 1
    generator = merged.setdefault("generator", {})
    generator.setdefault("prompt_template", PROMPT_TEMPLATE)
    generator.setdefault("extensions", []).append(dict(note, version=merged["version"]))
    return merged, added


def _dump(data: Mapping[str, Any], path: Path, header: str) -> str:
    if path.suffix.lower() == ".json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return header + yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=100)


def write_validated(data: Mapping[str, Any], out: Path, header: str = "") -> None:
    """Write ``data`` to ``out`` only if it loads as a valid description bank."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.stem, suffix=out.suffix)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(_dump(data, out, header))
        load_description_bank(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def chat(endpoint: str, model: str, api_key: str | None, prompt: str, temperature: float,
         timeout: float) -> str:
    """One chat completion from an OpenAI-compatible endpoint (``.../v1`` or the full URL)."""
    url = endpoint if endpoint.rstrip("/").endswith("chat/completions") \
        else endpoint.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": model, "temperature": temperature,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def _leading_comments(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    return "".join(header)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. https://host/v1")
    parser.add_argument("--model", help="model name sent to the endpoint")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the API key (unset = no auth header)")
    parser.add_argument("--per-au", type=int, default=10, help="new descriptions asked per AU")
    parser.add_argument("--aus", default=",".join(f"AU{a}" for a in ALL_AUS),
                        help="comma-separated AUs or a dataset name (default: all AUs)")
    parser.add_argument("--bank", type=Path, default=None, help="bank to extend (default: shipped)")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: --bank)")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--dry-run", action="store_true", help="print the prompts, call nothing")
    args = parser.parse_args(argv)

    source = args.bank or default_bank_path()
    out = args.out or source
    bank = load_description_bank(source)
    spec = args.aus.strip().lower()
    aus = au_numbers(spec if spec in DATASET_AUS else spec.split(","))
    prompts = {au: build_prompt(au, args.per_au, bank.descriptions.get(au, ())) for au in aus}
    if args.dry_run:
        for au, prompt in prompts.items():
            print(f"===== AU{au} =====\n{prompt}\n")
        return 0
    if not args.endpoint or not args.model:
        parser.error("--endpoint and --model are required unless --dry-run")
    api_key = os.environ.get(args.api_key_env)
    replies = {au: parse_reply(chat(args.endpoint, args.model, api_key, prompt,
                                    args.temperature, args.timeout))
               for au, prompt in prompts.items()}
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    note = {"model": args.model, "endpoint": args.endpoint, "per_au": args.per_au,
            "aus": [f"AU{a}" for a in aus], "date": datetime.date.today().isoformat()}
    merged, added = merge_descriptions(raw, replies, note)
    write_validated(merged, out, _leading_comments(source))
    print(f"version {merged['version']} written to {out}; added "
          + ", ".join(f"AU{au}: {added.get(au, 0)}" for au in aus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
