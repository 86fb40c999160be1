"""Open Inference Protocol v2 (KServe v2, Triton's HTTP API): infer requests and responses.

A request carries its inputs as JSON (``"data"``) or, with the protocol's *binary tensor
extension* (what ``tritonclient`` sends by default), as raw bytes after the JSON header,
whose length is the ``Inference-Header-Content-Length`` header; a ``BYTES`` element is then a
4-byte little-endian length followed by its UTF-8 bytes. Responses come back the same way:
JSON, or binary for the outputs the request asks so (``binary_data_output`` for all,
``outputs[].parameters.binary_data`` for one).

What a run returns is decided by its task (``TASKS``): one ``TaskSpec`` lists the outputs
its metadata declares and builds them from a ``Prediction`` (the run's predictions, as
``BertInferenceResult.predictions``): single-label ``label`` (BYTES ``[n]``) and ``score``
(FP32 ``[n]``); regression ``score`` (FP32 ``[n]``); multi-label ``scores`` (FP32 ``[n, L]``,
every label's probability, the label names in the output's ``parameters.labels``); token
classification ``entities`` (BYTES ``[n]``, each a JSON list of ``{label, start, end,
text, score}``). The input ``text_pair`` is optional like ``text``: the second texts of a
run trained on pairs.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION

HEADER_LENGTH = "Inference-Header-Content-Length"
TEXT = "text"
TEXT_PAIR = "text_pair"
INPUT_NAMES = (TEXT, TEXT_PAIR)
# Same bounds as BertInferenceRequest.max_seq_length (the workflow path's default is 128).
DEFAULT_MAX_SEQ_LENGTH = 128
MIN_MAX_SEQ_LENGTH, MAX_MAX_SEQ_LENGTH = 8, 512
_LENGTH = struct.Struct("<I")


class ProtocolError(Exception):
    """A request the protocol (or our limits) refuses: 400, or 413 when too large."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    texts: list[str]
    pairs: list[str] | None
    request_id: str | None
    max_seq_length: int
    # Outputs to return (None: all of the task's), and which of them as binary data.
    requested: list[str] | None
    binary: frozenset[str]
    binary_all: bool


@dataclass(frozen=True)
class Prediction:
    """What a classifier returned for n texts, in input order: one prediction per text (the
    task's shape, ``BertInferenceResult.predictions``) and the run's label names."""

    predictions: list[dict[str, Any]]
    label_names: list[str]


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # "BYTES" or "FP32"
    shape: list[int]
    data: Sequence[Any]
    parameters: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": self.shape}
        if self.parameters:
            body["parameters"] = dict(self.parameters)
        body["data"] = list(self.data)
        return body

    def raw(self) -> bytes:
        if self.datatype == "BYTES":
            parts = []
            for value in self.data:
                encoded = str(value).encode("utf-8")
                parts.append(_LENGTH.pack(len(encoded)))
                parts.append(encoded)
            return b"".join(parts)
        if self.datatype == "FP32":
            return struct.pack(f"<{len(self.data)}f", *self.data)
        raise ValueError(f"no binary encoding for {self.datatype}")


@dataclass(frozen=True)
class TaskSpec:
    """One task's outputs: what the model metadata declares, and how a prediction fills them."""

    name: str
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, datatype, shape; -1 = n)
    build: Callable[[Prediction], list[Tensor]]


def _single_label_outputs(prediction: Prediction) -> list[Tensor]:
    n = len(prediction.predictions)
    return [
        Tensor("label", "BYTES", [n], [p["label"] for p in prediction.predictions]),
        Tensor("score", "FP32", [n], [p["score"] for p in prediction.predictions]),
    ]


def _regression_outputs(prediction: Prediction) -> list[Tensor]:
    n = len(prediction.predictions)
    return [Tensor("score", "FP32", [n], [p["score"] for p in prediction.predictions])]


def _multi_label_outputs(prediction: Prediction) -> list[Tensor]:
    """Every label's probability per text, row-major; the label of each column named in
    ``parameters.labels`` (the labels predicted are those at 0.5 or more)."""
    names = prediction.label_names
    rows = prediction.predictions
    return [
        Tensor(
            "scores",
            "FP32",
            [len(rows), len(names)],
            [p["scores"][name] for p in rows for name in names],
            {"labels": list(names)},
        )
    ]


def _token_outputs(prediction: Prediction) -> list[Tensor]:
    n = len(prediction.predictions)
    return [
        Tensor(
            "entities",
            "BYTES",
            [n],
            [
                json.dumps(p["entities"], ensure_ascii=False, separators=(",", ":"))
                for p in prediction.predictions
            ],
        )
    ]


TASKS: dict[str, TaskSpec] = {
    SINGLE_LABEL: TaskSpec(
        SINGLE_LABEL,
        (("label", "BYTES", (-1,)), ("score", "FP32", (-1,))),
        _single_label_outputs,
    ),
    REGRESSION: TaskSpec(REGRESSION, (("score", "FP32", (-1,)),), _regression_outputs),
    MULTI_LABEL: TaskSpec(MULTI_LABEL, (("scores", "FP32", (-1, -1)),), _multi_label_outputs),
    TOKEN_CLASSIFICATION: TaskSpec(
        TOKEN_CLASSIFICATION, (("entities", "BYTES", (-1,)),), _token_outputs
    ),
}


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _decode_bytes_tensor(raw: bytes, name: str) -> list[str]:
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: binary data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"input {name!r}: binary element longer than its data")
        try:
            values.append(raw[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"input {name!r}: element {len(values)} is not UTF-8") from None
        offset += length
    return values


def _json_texts(data: Any, name: str) -> list[str]:
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: data must be a list of strings")
    # Shape [n, 1] may come nested ([["a"], ["b"]]) or flat; both are n texts.
    flat = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in data]
    if not all(isinstance(item, str) for item in flat):
        raise ProtocolError(f"input {name!r}: every element must be a string (datatype BYTES)")
    return flat


def _shape_count(shape: Any, name: str, max_texts: int) -> int:
    valid = (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(isinstance(dim, int) and not isinstance(dim, bool) for dim in shape)
        and (len(shape) == 1 or shape[1] == 1)
    )
    if not valid or shape[0] < 1:
        raise ProtocolError(f"input {name!r}: shape must be [n] or [n, 1] with n >= 1, not {shape}")
    if shape[0] > max_texts:
        raise ProtocolError(
            f"input {name!r}: {shape[0]} texts, over the limit of {max_texts} per request; "
            "split them over several requests",
            413,
        )
    return int(shape[0])


def parse_infer_request(body: bytes, header_length: str | None, max_texts: int) -> InferRequest:
    """The texts (and pairs) of an infer request, JSON or with binary tensors."""
    binary = b""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            json_size = -1
        if not 0 <= json_size <= len(body):
            raise ProtocolError(
                f"{HEADER_LENGTH}: {header_length[:40]!r} is not a length within the body "
                f"({len(body)} bytes)"
            )
        body, binary = body[:json_size], body[json_size:]
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"the request is not valid JSON: {str(err)[:200]}") from None
    request = _object(request, "the request")
    parameters = _object(request.get("parameters", {}), "parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError('"inputs" must be a non-empty list; send an input named "text"')

    found: dict[str, list[str]] = {}
    offset = 0
    for index, raw_input in enumerate(inputs):
        tensor = _object(raw_input, f"inputs[{index}]")
        name = tensor.get("name")
        if name not in INPUT_NAMES:
            raise ProtocolError(
                f"inputs[{index}]: unknown input {str(name)[:100]!r}; inputs are "
                f"{TEXT!r} and optionally {TEXT_PAIR!r}"
            )
        if name in found:
            raise ProtocolError(f"input {name!r} is given twice")
        if tensor.get("datatype") != "BYTES":
            raise ProtocolError(
                f"input {name!r}: datatype must be BYTES, not {str(tensor.get('datatype'))[:20]!r}"
            )
        count = _shape_count(tensor.get("shape"), name, max_texts)
        input_parameters = _object(tensor.get("parameters", {}), f"input {name!r} parameters")
        size = input_parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(
                    f"input {name!r}: binary_data_size {size!r} exceeds the binary data sent"
                )
            values = _decode_bytes_tensor(binary[offset : offset + size], name)
            offset += size
        elif "data" in tensor:
            values = _json_texts(tensor["data"], name)
        else:
            raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
        if len(values) != count:
            raise ProtocolError(f"input {name!r}: shape says {count} texts, data has {len(values)}")
        found[name] = values
    if offset != len(binary):
        raise ProtocolError(
            f"{len(binary) - offset} bytes of binary data belong to no input's binary_data_size"
        )
    if TEXT not in found:
        raise ProtocolError(f'no input named "{TEXT}" (datatype BYTES, shape [n])')
    pairs = found.get(TEXT_PAIR)
    if pairs is not None and len(pairs) != len(found[TEXT]):
        raise ProtocolError(
            f"{TEXT_PAIR!r} has {len(pairs)} texts and {TEXT!r} {len(found[TEXT])}: give one "
            "pair per text"
        )

    max_seq_length = parameters.get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH)
    if (
        not isinstance(max_seq_length, int)
        or isinstance(max_seq_length, bool)
        or not MIN_MAX_SEQ_LENGTH <= max_seq_length <= MAX_MAX_SEQ_LENGTH
    ):
        raise ProtocolError(
            f"parameters.max_seq_length must be an integer from {MIN_MAX_SEQ_LENGTH} to "
            f"{MAX_MAX_SEQ_LENGTH}"
        )
    requested, binary_outputs = None, set()
    if "outputs" in request:
        outputs = request["outputs"]
        if not isinstance(outputs, list):
            raise ProtocolError('"outputs" must be a list')
        requested = []
        for index, raw_output in enumerate(outputs):
            output = _object(raw_output, f"outputs[{index}]")
            name = output.get("name")
            if not isinstance(name, str):
                raise ProtocolError(f"outputs[{index}] needs a name")
            requested.append(name)
            output_parameters = _object(output.get("parameters", {}), f"output {name!r}")
            if output_parameters.get("binary_data") is True:
                binary_outputs.add(name)
    request_id = request.get("id")
    return InferRequest(
        texts=found[TEXT],
        pairs=pairs,
        request_id=str(request_id) if request_id is not None else None,
        max_seq_length=max_seq_length,
        requested=requested,
        binary=frozenset(binary_outputs),
        binary_all=parameters.get("binary_data_output") is True,
    )


def encode_infer_response(
    request: InferRequest,
    model_name: str,
    model_version: str,
    task: TaskSpec,
    prediction: Prediction,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (the JSON header's length when binary)."""
    outputs = task.build(prediction)
    if request.requested is not None:
        by_name = {tensor.name: tensor for tensor in outputs}
        unknown = [name for name in request.requested if name not in by_name]
        if unknown:
            raise ProtocolError(
                f"unknown output {unknown[0][:100]!r}; this model's outputs are "
                f"{', '.join(by_name)}"
            )
        outputs = [by_name[name] for name in request.requested]
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.request_id is not None:
        header["id"] = request.request_id
    tensors, blobs = [], []
    for tensor in outputs:
        if request.binary_all or tensor.name in request.binary:
            raw = tensor.raw()
            blobs.append(raw)
            described: dict[str, Any] = {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": tensor.shape,
                "parameters": {**tensor.parameters, "binary_data_size": len(raw)},
            }
            tensors.append(described)
        else:
            tensors.append(tensor.json())
    header["outputs"] = tensors
    encoded = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return encoded, {}
    return encoded + b"".join(blobs), {HEADER_LENGTH: str(len(encoded))}


def model_metadata(
    model_name: str, run_id: str, platform: str, task: TaskSpec, label_names: list[str]
) -> dict[str, Any]:
    """``GET /v2/models/{name}``: versions (the run id that serves the name now), inputs,
    outputs, and the label names."""

    def shape(dims: tuple[int, ...]) -> list[int]:
        return list(dims)

    return {
        "name": model_name,
        "versions": [run_id],
        "platform": platform,
        "inputs": [
            {"name": TEXT, "datatype": "BYTES", "shape": [-1]},
            {"name": TEXT_PAIR, "datatype": "BYTES", "shape": [-1], "optional": True},
        ],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": shape(dims)}
            for name, datatype, dims in task.outputs
        ],
        "parameters": {"task": task.name, "labels": list(label_names)},
    }
