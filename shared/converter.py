"""The pydantic data converter every client and worker uses (docs/architecture.md).

Decoding errors become a non-retryable ``InvalidConfig`` ApplicationError naming the field.
Raised while decoding a workflow's input, such an error fails the workflow at once instead
of failing the workflow task, which Temporal would retry forever (a workflow stuck RUNNING).
"""

from __future__ import annotations

from typing import Any

import temporalio.api.common.v1
from pydantic import ValidationError
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)

from shared.errors import invalid_config


class ValidatingJSONPayloadConverter(PydanticJSONPlainPayloadConverter):
    def from_payload(
        self, payload: temporalio.api.common.v1.Payload, type_hint: type | None = None
    ) -> Any:
        try:
            return super().from_payload(payload, type_hint)
        except ValidationError as err:
            if any(e.get("type") == "json_invalid" for e in err.errors()):
                raise invalid_config("the payload is not valid JSON") from None
            raise invalid_config(err) from None


class BertPayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        json_converter = ValidatingJSONPayloadConverter()
        super().__init__(
            *(
                json_converter if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


data_converter = DataConverter(payload_converter_class=BertPayloadConverter)
