"""Test plumbing shared by every test package: ports, binaries, worker processes, fakes."""
