"""The Open Inference Protocol codec and the dynamic batcher, without a server or a model."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.inferencer.batching import DynamicBatcher
from services.inferencer.classifiers import LoadedModel
from services.inferencer.oip import (
    HEADER_LENGTH,
    SINGLE_LABEL,
    TASKS,
    Prediction,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
)


def bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def binary_request(texts: list[str], **extra: object) -> tuple[bytes, str]:
    raw = bytes_tensor(texts)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [len(texts)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            **extra,
        }
    ).encode()
    return header + raw, str(len(header))


def test_binary_tensors_decode_utf8_texts() -> None:
    texts = ["naïve café ☕", "", "plain"]
    body, length = binary_request(texts, parameters={"binary_data_output": True})
    request = parse_infer_request(body, length, max_texts=8)
    assert request.texts == texts and request.binary_all and request.pairs is None


def test_json_shapes_n_and_n_by_1_are_the_same_texts() -> None:
    for shape, data in (([2], ["a", "b"]), ([2, 1], [["a"], ["b"]]), ([2, 1], ["a", "b"])):
        body = json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": data}]}
        ).encode()
        assert parse_infer_request(body, None, 8).texts == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "length", "status", "fragment"),
    [
        (b"[]", None, 400, "JSON object"),
        (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [9]}]}', None, 413, "9"),
        (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0]}]}', None, 400, ">= 1"),
        (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 2]}]}', None, 400, "[n"),
        (
            b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}',
            None,
            400,
            "neither",
        ),
        (b'{"inputs": []}', "x", 400, HEADER_LENGTH),
    ],
)
def test_refusals(body: bytes, length: str | None, status: int, fragment: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_infer_request(body, length, max_texts=8)
    assert refused.value.status == status and fragment in str(refused.value)


def test_binary_data_must_add_up() -> None:
    body, length = binary_request(["abc"])
    with pytest.raises(ProtocolError, match="belong to no input"):
        parse_infer_request(body + b"extra", length, 8)
    truncated = body[:-1]
    with pytest.raises(ProtocolError, match="exceeds"):
        parse_infer_request(truncated, length, 8)


def test_binary_and_json_outputs_round_trip() -> None:
    prediction = Prediction(
        [{"label": "pos", "score": 0.75}, {"label": "neg", "score": 0.5}], ["neg", "pos"]
    )
    body, length = binary_request(["a", "b"], outputs=[{"name": "score"}, {"name": "label"}])
    request = parse_infer_request(body, length, 8)
    encoded, headers = encode_infer_response(
        request, "@prod", "run-1", TASKS[SINGLE_LABEL], prediction
    )
    assert headers == {}  # JSON unless asked
    answer = json.loads(encoded)
    assert answer["model_version"] == "run-1"
    assert [o["name"] for o in answer["outputs"]] == ["score", "label"]
    assert answer["outputs"][1]["data"] == ["pos", "neg"]

    body, length = binary_request(["a", "b"], parameters={"binary_data_output": True})
    request = parse_infer_request(body, length, 8)
    encoded, headers = encode_infer_response(request, "r", "r", TASKS[SINGLE_LABEL], prediction)
    split = int(headers[HEADER_LENGTH])
    header, raw = json.loads(encoded[:split]), encoded[split:]
    label, score = header["outputs"]
    labels_raw = raw[: label["parameters"]["binary_data_size"]]
    scores_raw = raw[label["parameters"]["binary_data_size"] :]
    assert labels_raw == bytes_tensor(["pos", "neg"])
    assert struct.unpack("<2f", scores_raw) == (0.75, 0.5)


class FakeClassifier:
    """Label "long" for texts over 3 characters; the score is the length."""

    backend = "fake"
    label_names = ["short", "long"]

    def __init__(self, delay: float = 0.0, device: str = "cpu") -> None:
        self.calls: list[list[str]] = []
        self.batch_sizes: list[int] = []
        self.device = device
        self._delay = delay
        self._lock = threading.Lock()

    def predict(self, texts, max_seq_length, batch_size, on_batch, text_pairs=None):  # type: ignore[no-untyped-def]
        with self._lock:
            self.calls.append(list(texts))
            self.batch_sizes.append(batch_size)
        time.sleep(self._delay)
        if "boom" in texts:
            raise RuntimeError("boom")
        return [expected(t) for t in texts]


def expected(text: str) -> dict:
    return {"label": "long" if len(text) > 3 else "short", "score": float(len(text))}


async def test_concurrent_requests_share_a_batch_and_get_their_own_answers() -> None:
    classifier = FakeClassifier(delay=0.05)
    model = LoadedModel(classifier, ())  # type: ignore[arg-type]
    batcher = DynamicBatcher(ThreadPoolExecutor(2), window_seconds=0.02, max_batch_texts=64)
    requests = [["a", "abcd"], ["xyz"], ["hello", "b", "cc"]]
    answers = await asyncio.gather(*(batcher.predict(model, texts, 128) for texts in requests))
    for texts, answer in zip(requests, answers, strict=True):
        assert answer == [expected(t) for t in texts]
    assert len(classifier.calls) == 1 and len(classifier.calls[0]) == 6


async def test_forward_passes_are_narrow_on_cpu_and_wide_on_an_accelerator() -> None:
    batcher = DynamicBatcher(ThreadPoolExecutor(2), window_seconds=0, max_batch_texts=256)
    for device, width in (("cpu", 16), ("cuda:0", 64)):
        classifier = FakeClassifier(device=device)
        model = LoadedModel(classifier, ())  # type: ignore[arg-type]
        await batcher.predict(model, ["some text"] * 40, 128)
        assert classifier.batch_sizes == [width], device


async def test_batches_stop_at_max_texts_and_errors_reach_only_their_batch() -> None:
    classifier = FakeClassifier()
    model = LoadedModel(classifier, ())  # type: ignore[arg-type]
    batcher = DynamicBatcher(ThreadPoolExecutor(2), window_seconds=0.02, max_batch_texts=3)
    first = batcher.predict(model, ["a", "b"], 128)
    second = batcher.predict(model, ["c", "d"], 128)  # would make 4 texts: the next batch
    await asyncio.gather(first, second)
    assert [len(call) for call in classifier.calls] == [2, 2]
    results = await asyncio.gather(
        batcher.predict(model, ["boom"], 128),
        batcher.predict(model, ["fine", "ok"], 128),
        return_exceptions=True,
    )
    # Both were in the same batch: the classifier's failure is every request's answer.
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await batcher.predict(model, ["again"], 128) == [expected("again")]
