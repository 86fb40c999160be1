"""What every comparison of ``python -m bench.compare`` shares: the data, the seeds, the task
queues of its workers and its progress lines."""

from __future__ import annotations

import csv
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LABELS = ["negative", "positive"]  # the workflow maps string labels to ids in sorted order
SEED = 42
SPLIT_SEED = 13
TRAIN_QUEUE, INFER_QUEUE, FLOOR_QUEUE = "bench-train", "bench-infer", "bench-floor"


@dataclass(frozen=True)
class BenchData:
    train_csv: Path
    eval_csv: Path
    eval_rows: int
    texts: list[str]  # held out from training and evaluation: the inference set
    gold: list[int]


def prepare_data(work: Path, train_rows: int, eval_rows: int, infer_rows: int) -> BenchData:
    from bert_finetune.demo_data import tweet_rows

    rows = tweet_rows()
    random.Random(SPLIT_SEED).shuffle(rows)
    needed = train_rows + eval_rows + infer_rows
    if len(rows) < needed:
        sys.exit(f"only {len(rows)} labelled tweets, {needed} needed")
    paths = []
    for name, part in (
        ("train.csv", rows[:train_rows]),
        ("validation.csv", rows[train_rows : train_rows + eval_rows]),
    ):
        path = work / name
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        paths.append(path)
    held_out = rows[train_rows + eval_rows : needed]
    return BenchData(
        paths[0],
        paths[1],
        eval_rows,
        [text for text, _ in held_out],
        [LABELS.index(label) for _, label in held_out],
    )


def temporal_cli() -> str:
    """The ``temporal`` binary for the bench's dev server (PATH, else the venv's)."""
    return shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")


def step(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# A row of the table: comparison, ours, baseline, ratio, goal, quality.
Row = tuple[str, str, str, str, str, str]


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"
