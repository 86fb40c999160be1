"""A free loopback port: tests never bind fixed ports (other test runs share the machine)."""

from shared.temporal import free_loopback_port as free_port

__all__ = ["free_port"]
