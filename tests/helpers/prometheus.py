"""Reading a Prometheus server's HTTP API."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any


def prometheus_get(base_url: str, path: str, params: Mapping[str, Any]) -> Any:
    """GET a Prometheus API path; returns ``data`` or raises with Prometheus's error text."""
    query = urllib.parse.urlencode(params, doseq=True)
    request = urllib.request.Request(f"{base_url.rstrip('/')}{path}?{query}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            body = json.load(response)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {dict(params)}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]
