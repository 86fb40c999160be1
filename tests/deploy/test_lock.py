"""The dependency locks: complete for pyproject.toml, hashed, torch-free, used everywhere.

When a test here fails after a pyproject.toml change, regenerate with `make lock` (it needs
the package index) and commit requirements/*.lock.
"""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.chartlib import REPO_ROOT

LOCKS = {
    "dev": REPO_ROOT / "requirements" / "dev.lock",
    "trainer": REPO_ROOT / "requirements" / "trainer.lock",
    "inferencer": REPO_ROOT / "requirements" / "inferencer.lock",
}
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
# Each image installs its own torch build before the lock; the CUDA build brings these.
NEVER_LOCKED = {"torch", "triton"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def locked(extra: str) -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in _PIN.findall(LOCKS[extra].read_text())}


def requirements_of(extra: str) -> list[Requirement]:
    """The project's requirements under ``extra``, following self-references."""
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    pending, seen = [extra], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for raw in PROJECT["optional-dependencies"][current]:
            requirement = Requirement(raw)
            if canonicalize_name(requirement.name) == "bert-finetune":
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def unlocked(extra: str, pins: dict[str, str]) -> list[str]:
    """Requirements of ``extra`` that ``pins`` lacks or pins to a version out of range."""
    missing = []
    for requirement in requirements_of(extra):
        name = canonicalize_name(requirement.name)
        if name in NEVER_LOCKED:
            continue
        version = pins.get(name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement} (locked: {version})")
    return missing


@pytest.mark.parametrize("extra", sorted(LOCKS))
def test_every_requirement_of_pyproject_is_locked(extra: str) -> None:
    missing = unlocked(extra, locked(extra))
    assert not missing, (
        f"requirements/{extra}.lock is out of date with pyproject.toml: {missing}; "
        "run `make lock` and commit requirements/*.lock"
    )


@pytest.mark.parametrize("extra", sorted(LOCKS))
def test_locks_are_hashed_and_leave_torch_to_the_images(extra: str) -> None:
    text = LOCKS[extra].read_text()
    pins = locked(extra)
    assert len(pins) > 20
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    for entry in entries:
        if _PIN.match(entry):
            assert "--hash=sha256:" in entry, entry.splitlines()[0]
    assert not {n for n in pins if n in NEVER_LOCKED or n.startswith("nvidia-")}


@pytest.mark.parametrize("extra", ["trainer", "inferencer"])
def test_image_locks_agree_with_the_dev_lock(extra: str) -> None:
    dev = locked("dev")
    disagreeing = {n: (v, dev.get(n)) for n, v in locked(extra).items() if dev.get(n) != v}
    assert not disagreeing, "tests would run other versions than the images ship"


def test_install_and_images_install_from_the_locks() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "--no-deps --require-hashes -r requirements/dev.lock" in makefile
    assert "$(PIP) check" in makefile  # a lock missing a requirement fails `make install`
    for worker in ("trainer", "inferencer"):
        dockerfile = (REPO_ROOT / "services" / worker / "Dockerfile").read_text()
        assert f"--no-deps --require-hashes -r requirements/{worker}.lock" in dockerfile


def test_the_completeness_check_catches_a_missing_or_stale_pin() -> None:
    pins = locked("trainer")
    pins.pop("optuna")
    pins["transformers"] = "4.57.0"  # outside transformers>=5,<6
    missing = unlocked("trainer", pins)
    assert sorted(m.split(" ")[0] for m in missing) == ["optuna<6,>=5", "transformers<6,>=5"]
