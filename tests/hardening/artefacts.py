"""Bad inputs a user could hand the service: broken data files and things that are not models."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import SentimentData
from tests.tiny import sentiment_rows, write_csv

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

# Executed only if something loads the model with trust_remote_code: it leaves a marker.
REMOTE_CODE = """
from pathlib import Path
Path("MARKER").write_text("executed")
from transformers import BertConfig, BertForSequenceClassification
class EvilConfig(BertConfig):
    model_type = "evil-bert"
class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig
"""


@dataclass(frozen=True)
class Artefacts:
    root: Path
    outside: Path  # a directory outside every runs root; nothing may ever appear in it
    missing_file: Path
    unsupported_file: Path
    garbage_parquet: Path
    broken_json: Path
    no_text_column: Path
    no_label_column: Path
    header_only: Path
    single_class: Path
    float_labels: Path
    mixed_labels: Path
    latin1: Path
    null_text: Path
    not_a_model: Path
    no_tokenizer: Path
    vision_model: Path
    pickle_only: Path
    remote_code: Path
    # Outside the trainer's local path roots (another tenant's data, a mounted secret).
    forbidden: Path
    forbidden_file: Path
    forbidden_model: Path
    forbidden_dataset: Path
    link_to_forbidden_file: Path  # inside the roots, pointing out of them
    model_linking_out: Path  # a model folder inside the roots with one file linking out
    dict_labels: Path  # labels that are objects holding a secret
    list_text: Path  # texts that are lists holding a secret


# Written into files whose contents must never show up in an error message.
SECRET = "SECRET-TOKEN-do-not-echo"


def _copy_tokenizer(tiny_model: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tiny_model / name).exists():
            shutil.copy(tiny_model / name, target / name)


def build_artefacts(root: Path, tiny_model: Path, data: SentimentData) -> Artefacts:
    import torch
    from transformers import BertForSequenceClassification, ViTConfig, ViTModel

    rows = sentiment_rows(40, seed=3)
    outside = root / "outside"
    outside.mkdir()

    unsupported = root / "train.txt"
    unsupported.write_text("good\nbad\n", encoding="utf-8")
    garbage_parquet = root / "garbage.parquet"
    garbage_parquet.write_bytes(b"this is not parquet at all" * 10)
    broken_json = root / "broken.json"
    broken_json.write_text('{"sentence": "good", "label": 1\n{"sentence": ', encoding="utf-8")
    no_text = write_csv(root / "no_text.csv", rows, header=("text", "label"))
    no_label = write_csv(root / "no_label.csv", rows, header=("sentence", "target"))
    header_only = write_csv(root / "header_only.csv", [])
    single_class = write_csv(root / "single_class.csv", [(t, 1) for t, _ in rows])
    float_labels = write_csv(
        root / "float_labels.csv", [(t, 0.5 + i % 2) for i, (t, _) in enumerate(rows)]
    )
    mixed_labels = root / "mixed_labels.jsonl"
    mixed_labels.write_text(
        "\n".join(
            json.dumps({"sentence": t, "label": i if i % 2 else f"class-{i}"})
            for i, (t, _) in enumerate(rows)
        ),
        encoding="utf-8",
    )
    latin1 = root / "latin1.csv"
    latin1.write_bytes("sentence,label\ncaf\u00e9 good,1\nna\u00efve bad,0\n".encode("latin-1"))
    null_text = root / "null_text.jsonl"
    null_text.write_text(
        "\n".join(
            json.dumps({"sentence": None if i == 3 else t, "label": label})
            for i, (t, label) in enumerate(rows)
        ),
        encoding="utf-8",
    )

    not_a_model = root / "models" / "not-a-model"
    not_a_model.mkdir(parents=True)
    (not_a_model / "README.md").write_text("just notes\n", encoding="utf-8")

    no_tokenizer = root / "models" / "no-tokenizer"
    shutil.copytree(tiny_model, no_tokenizer)
    for name in TOKENIZER_FILES:
        (no_tokenizer / name).unlink(missing_ok=True)

    vision = root / "models" / "vision"
    ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=16,
        )
    ).save_pretrained(vision)
    # A tokenizer is present so only the architecture is wrong; swap in the vision config.
    _copy_tokenizer(tiny_model, vision)
    (vision / "config.json").write_text(
        json.dumps({**json.loads((vision / "config.json").read_text()), "model_type": "vit"}),
        encoding="utf-8",
    )

    pickle_only = root / "models" / "pickle-only"
    _copy_tokenizer(tiny_model, pickle_only)
    model = BertForSequenceClassification.from_pretrained(tiny_model)
    model.config.save_pretrained(pickle_only)
    torch.save(model.state_dict(), pickle_only / "pytorch_model.bin")

    remote = root / "models" / "remote-code"
    shutil.copytree(tiny_model, remote)
    config = json.loads((remote / "config.json").read_text())
    config["model_type"] = "evil-bert"
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForSequenceClassification": "evil.EvilModel",
    }
    (remote / "config.json").write_text(json.dumps(config), encoding="utf-8")
    remote_code_marker = outside / "REMOTE_CODE_RAN"
    (remote / "evil.py").write_text(
        REMOTE_CODE.replace("MARKER", str(remote_code_marker)), encoding="utf-8"
    )

    forbidden = root.with_name(root.name + "-forbidden")
    forbidden.mkdir()
    forbidden_file = write_csv(forbidden / "tenant-b.csv", [(SECRET, 1), ("good day", 0)] * 4)
    forbidden_model = forbidden / "model"
    shutil.copytree(tiny_model, forbidden_model)
    forbidden_dataset = forbidden / "dataset"
    write_csv(forbidden_dataset / "train.csv", rows)
    link_to_forbidden = root / "link-to-tenant-b.csv"
    link_to_forbidden.symlink_to(forbidden_file)
    model_linking_out = root / "models" / "config-links-out"
    shutil.copytree(tiny_model, model_linking_out)
    (model_linking_out / "config.json").unlink()
    (model_linking_out / "config.json").symlink_to(forbidden_model / "config.json")
    dict_labels = root / "dict_labels.jsonl"
    dict_labels.write_text(
        "\n".join(json.dumps({"sentence": t, "label": {"token": SECRET}}) for t, _ in rows),
        encoding="utf-8",
    )
    list_text = root / "list_text.jsonl"
    list_text.write_text(
        "\n".join(json.dumps({"sentence": [SECRET], "label": label}) for _, label in rows),
        encoding="utf-8",
    )

    return Artefacts(
        root=root,
        outside=outside,
        missing_file=root / "does-not-exist.csv",
        unsupported_file=unsupported,
        garbage_parquet=garbage_parquet,
        broken_json=broken_json,
        no_text_column=no_text,
        no_label_column=no_label,
        header_only=header_only,
        single_class=single_class,
        float_labels=float_labels,
        mixed_labels=mixed_labels,
        latin1=latin1,
        null_text=null_text,
        not_a_model=not_a_model,
        no_tokenizer=no_tokenizer,
        vision_model=vision,
        pickle_only=pickle_only,
        remote_code=remote,
        forbidden=forbidden,
        forbidden_file=forbidden_file,
        forbidden_model=forbidden_model,
        forbidden_dataset=forbidden_dataset,
        link_to_forbidden_file=link_to_forbidden,
        model_linking_out=model_linking_out,
        dict_labels=dict_labels,
        list_text=list_text,
    )
