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
    # Model folders inside the roots whose metadata names files outside them.
    model_index_out: Path  # model.safetensors.index.json weight_map -> a forbidden shard
    model_tokenizer_file_out: Path  # tokenizer_config.json vocab_file -> a forbidden file
    # A local dataset folder whose README.md configs name a forbidden file.
    dataset_card_out: Path
    many_classes: Path  # 1,001 distinct labels (the default cap is 1,000)
    nan_model: Path  # a model whose weights hold NaN: its training diverges at once
    secret_single_class: Path  # one class, whose label is the secret
    secret_validation_label: Path  # a validation label (the secret) the train split lacks
    headerless: Path  # no header row: its first row (holding the secret) becomes the header
    # The tasks' malformed rows (issue 22), each holding the secret in the bad row.
    tags_mismatch: Path  # token classification: row 1 has 3 words and 2 tags
    score_not_number: Path  # regression: row 1's label is the secret
    unknown_validation_label: Path  # multi-label validation data: a label train lacks
    empty_pair: Path  # text pairs: row 1's second text is empty


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
    model_index_out, model_tokenizer_file_out, nan_model = _metadata_models(
        root, tiny_model, forbidden
    )
    dataset_card_out = root / "datasets" / "card-points-out"
    write_csv(dataset_card_out / "train.csv", rows)
    (dataset_card_out / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        f"    path: {forbidden_file}\n---\n# A dataset card\n",
        encoding="utf-8",
    )
    many_classes = write_csv(
        root / "many_classes.csv", [(t, f"class-{i}") for i, (t, _) in enumerate(rows * 26)][:1001]
    )
    secret_single_class = write_csv(
        root / "secret_single_class.csv", [(t, SECRET) for t, _ in rows]
    )
    labelled = sentiment_rows(40, seed=4, string_labels=True)
    secret_validation_label = write_csv(
        root / "secret_validation_label.csv", [*labelled, ("a strange film", SECRET)]
    )
    headerless = root / "headerless.csv"
    headerless.write_text(
        f"{SECRET},1\n" + "".join(f"{t},{label}\n" for t, label in rows), encoding="utf-8"
    )

    tags_mismatch = root / "tags_mismatch.jsonl"
    tags_mismatch.write_text(
        json.dumps({"tokens": ["good", "day"], "tags": ["O", "O"]})
        + "\n"
        + json.dumps({"tokens": [SECRET, "met", "Bob"], "tags": ["O", "B-PER"]})
        + "\n",
        encoding="utf-8",
    )
    score_not_number = write_csv(
        root / "score_not_number.csv", [("good", "0.9"), ("bad", SECRET), ("fun", "0.7")]
    )
    unknown_validation_label = write_csv(
        root / "unknown_validation_label.csv",
        [(text, "positive" if label else "negative") for text, label in rows[:5]]
        + [("great film", f"positive|{SECRET}")],
    )
    empty_pair = write_csv(
        root / "empty_pair.csv",
        [(text, "the movie", label) for text, label in rows[:5]] + [(SECRET, "", 1)],
        header=("sentence", "sentence2", "label"),
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
        model_index_out=model_index_out,
        model_tokenizer_file_out=model_tokenizer_file_out,
        dataset_card_out=dataset_card_out,
        many_classes=many_classes,
        nan_model=nan_model,
        secret_single_class=secret_single_class,
        secret_validation_label=secret_validation_label,
        headerless=headerless,
        tags_mismatch=tags_mismatch,
        score_not_number=score_not_number,
        unknown_validation_label=unknown_validation_label,
        empty_pair=empty_pair,
    )


def _metadata_models(root: Path, tiny_model: Path, forbidden: Path) -> tuple[Path, Path, Path]:
    """Model folders inside the roots that name files outside them through their metadata
    (a sharded checkpoint's index, a tokenizer file field), and one whose weights are NaN."""
    import torch
    from safetensors.torch import load_file, save_file

    index_out = root / "models" / "index-points-out"
    shutil.copytree(tiny_model, index_out)
    shard = forbidden / "shard.safetensors"
    (index_out / "model.safetensors").replace(shard)
    weights = load_file(shard)
    (index_out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": dict.fromkeys(weights, str(shard))}),
        encoding="utf-8",
    )

    tokenizer_out = root / "models" / "tokenizer-file-points-out"
    shutil.copytree(tiny_model, tokenizer_out)
    shutil.copy(tiny_model / "vocab.txt", forbidden / "vocab.txt")
    config = json.loads((tokenizer_out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["vocab_file"] = str(forbidden / "vocab.txt")
    (tokenizer_out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")

    nan_model = root / "models" / "nan-weights"
    shutil.copytree(tiny_model, nan_model)
    poisoned = {
        name: torch.full_like(tensor, float("nan")) if "embeddings" in name else tensor
        for name, tensor in weights.items()
    }
    save_file(poisoned, nan_model / "model.safetensors", metadata={"format": "pt"})
    return index_out, tokenizer_out, nan_model
