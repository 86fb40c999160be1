"""Validate rendered custom resources against the vendored upstream CRD schemas (crds/)."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused, as the API server's pruning would drop them."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            pattern = node.get("pattern")
            if isinstance(pattern, str) and pattern.startswith("^(?i)"):
                # Go's regexp accepts a flag group after ^; Python wants global flags first.
                node["pattern"] = "(?i)^" + pattern.removeprefix("^(?i)")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@cache
def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` to the served version's strict openAPIV3Schema."""
    found = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = _strict(version["schema"]["openAPIV3Schema"])
                # metadata is validated by the API server, not by the CRD's schema.
                schema["properties"]["metadata"] = {"type": "object"}
                found[(f"{group}/{version['name']}", kind)] = schema
    return found


def custom_kinds() -> set[str]:
    return {kind for _, kind in _schemas()}


def validate_custom_resource(obj: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``obj`` does not fit its CRD."""
    key = (obj["apiVersion"], obj["kind"])
    schema = _schemas().get(key)
    assert schema is not None, f"no vendored CRD for {key} (see tests/deploy/crds/README.md)"
    jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)
