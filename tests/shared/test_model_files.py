"""A model folder's metadata may name only plain files inside the folder (``model_files``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from shared.model_files import check_model_folder, names_plain_file_inside


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    (folder / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    (folder / "model-00001-of-00001.safetensors").write_bytes(b"x")
    return folder


def _refusal(folder: Path, links_inside: bool = False) -> str:
    with pytest.raises(ApplicationError) as raised:
        check_model_folder(folder, "model_name 'm'", "InvalidConfig", "fix", links_inside)
    assert raised.value.type == "InvalidConfig" and raised.value.non_retryable
    return raised.value.message


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../elsewhere/model.safetensors", "a/../../x", "~/x", "hf://x/y", "C:x", ""],
)
def test_names_outside_the_folder_are_not_plain_files_inside_it(tmp_path: Path, name: str) -> None:
    assert not names_plain_file_inside(_folder(tmp_path), name)


def test_a_file_of_the_folder_or_a_subfolder_is_accepted(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    assert names_plain_file_inside(folder, "vocab.txt")
    assert names_plain_file_inside(folder, "not-yet-there.safetensors")
    (folder / "sub").mkdir()
    assert not names_plain_file_inside(folder, "sub"), "a folder is not a plain file"
    os.mkfifo(folder / "pipe")
    assert not names_plain_file_inside(folder, "pipe"), "a FIFO would hang the reader"
    (folder / "out").symlink_to(tmp_path)
    assert not names_plain_file_inside(folder, "out/secret.txt")


def test_a_saved_model_folder_passes(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}), encoding="utf-8"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"vocab_file": "vocab.txt", "tokenizer_file": None}), encoding="utf-8"
    )
    check_model_folder(folder, "model_name 'm'", "InvalidConfig", "fix", links_inside=True)
    check_model_folder(tmp_path / "missing", "model_name 'm'", "InvalidConfig", "fix")


@pytest.mark.parametrize("index", ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
def test_a_shard_index_naming_weights_elsewhere_is_refused(tmp_path: Path, index: str) -> None:
    folder = _folder(tmp_path)
    (folder / index).write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "/secret"}}),
        encoding="utf-8",
    )
    message = _refusal(folder)
    assert f"in {index} field 'weight_map'" in message and "/secret" not in message


@pytest.mark.parametrize(
    ("metadata", "field", "value"),
    [
        ("tokenizer_config.json", "vocab_file", "/etc/passwd"),
        ("tokenizer_config.json", "merges_file", "../merges.txt"),
        ("tokenizer_config.json", "tokenizer_file", "../../tokenizer.json"),
        ("tokenizer_config.json", "fast_tokenizer_files", ["tokenizer.json", "../x.json"]),
        ("special_tokens_map.json", "special_tokens_map_file", "/root/.cache/x.json"),
        ("tokenizer.json", "added_tokens_file", "/etc/shadow"),
        ("config.json", "vocab_file", "/etc/passwd"),
    ],
)
def test_a_tokenizer_file_field_naming_a_file_elsewhere_is_refused(
    tmp_path: Path, metadata: str, field: str, value: object
) -> None:
    folder = _folder(tmp_path)
    (folder / metadata).write_text(json.dumps({field: value}), encoding="utf-8")
    message = _refusal(folder)
    assert f"in {metadata} field {field!r}" in message


def test_the_tokenizer_model_section_is_checked_too(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "vocab_file": "/etc/passwd"}}), encoding="utf-8"
    )
    assert "tokenizer.json field 'vocab_file'" in _refusal(folder)


def test_an_export_manifest_naming_files_outside_the_export_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "export.json").write_text(
        json.dumps({"served_graph": "model.onnx", "tokenizer": "../../tokenizer.json"}),
        encoding="utf-8",
    )
    assert "onnx/export.json field 'tokenizer'" in _refusal(folder)


def test_links_out_of_the_folder_are_refused_only_where_asked(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret", encoding="utf-8")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "tokenizer.json").symlink_to(secret)
    (folder / "inside.txt").symlink_to(folder / "vocab.txt")
    check_model_folder(folder, "model_name 'm'", "InvalidConfig", "fix")  # the roots rule
    message = _refusal(folder, links_inside=True)
    assert "holds 'onnx/tokenizer.json', a link to outside its folder" in message
