"""Fixtures for the inferencer tests: the session's trained tiny run (shared with hardening)."""

from tests.hardening.conftest import trained_run  # noqa: F401  (a session fixture, trained once)
