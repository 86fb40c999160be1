"""The import rules between the trainer's groups, and the versioning rule for workflow code.

Read from the source (``ast``), so a rule is checked for every module, including ones no
other test imports. The groups are described in each package's docstring and in
docs/architecture.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from shared import workflow_versions

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "services" / "trainer"
GROUPS = ("orchestration", "activities", "training", "run_folder", "tracking", "distributed")
WORKFLOW_MODULES = sorted(TRAINER.glob("orchestration/*.py")) + [
    ROOT / "services" / "inferencer" / "workflows.py"
]
HEAVY = ("torch", "transformers", "datasets", "onnxruntime", "optuna", "mlflow", "sklearn")


def imported_modules(path: Path, typing_only: bool = True) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count);
    ``typing_only=False`` leaves out the imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def group_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["services", "trainer"] and len(parts) > 2 and parts[2] in GROUPS:
        return parts[2]
    return None


def test_every_trainer_module_lives_in_a_group() -> None:
    top_level = sorted(p.name for p in TRAINER.glob("*.py"))
    assert top_level == ["__init__.py", "registry.py", "worker.py"]
    for group in GROUPS:
        doc = ast.get_docstring(ast.parse((TRAINER / group / "__init__.py").read_text()))
        assert doc and len(doc) > 100, f"{group}/__init__.py needs its one-paragraph docstring"


@pytest.mark.parametrize("path", WORKFLOW_MODULES, ids=lambda p: p.stem)
def test_workflow_modules_import_only_shared_temporalio_and_their_own_group(path: Path) -> None:
    for module in imported_modules(path):
        top = module.split(".")[0]
        if top in {"shared", "temporalio"} or top in sys.stdlib_module_names:
            continue
        if module.startswith(("services.trainer.orchestration", "services.inferencer.workflows")):
            continue
        pytest.fail(f"{path.relative_to(ROOT)} imports {module}: workflow code must replay")


def test_workflow_modules_load_no_heavy_library_and_no_file_layer() -> None:
    """What the workflow modules import, transitively, in a fresh interpreter."""
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in WORKFLOW_MODULES]
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"workflow code loads {heavy[:5]}"
    file_layer = [m for m in loaded if group_of(m) in {"run_folder", "training", "distributed"}]
    assert not file_layer, f"workflow code loads {file_layer}"


@pytest.mark.parametrize(
    ("group", "forbidden"),
    [
        # The run-folder protocol is the bottom floor: it knows no training, no Temporal.
        ("run_folder", {"orchestration", "activities", "training", "tracking", "distributed"}),
        # The training core reports through ProgressSink and StopControl, not through Temporal.
        ("training", {"orchestration", "activities"}),
        ("tracking", {"orchestration", "activities", "distributed"}),
    ],
)
def test_lower_groups_never_import_the_layers_above(group: str, forbidden: set[str]) -> None:
    for path in sorted((TRAINER / group).glob("*.py")):
        for module in imported_modules(path):
            assert group_of(module) not in forbidden, f"{path.relative_to(ROOT)} imports {module}"
            if group in {"run_folder", "training"}:
                assert not module.startswith("temporalio.activity"), (
                    f"{path.relative_to(ROOT)} imports {module}: the core never heartbeats itself"
                )


def test_no_import_cycle_between_trainer_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in TRAINER.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        imports = imported_modules(path, typing_only=False)
        graph[name] = {m for m in imports if m.startswith("services.trainer.")}
    known = set(graph)
    for name in graph:
        graph[name] = {m if m in known else m.rsplit(".", 1)[0] for m in graph[name]} & known
        graph[name].discard(name)
    # Package __init__ files import nothing, so a cycle is a cycle between modules.
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_every_patch_id_is_a_constant_of_workflow_versions() -> None:
    """``workflow.patched``/``deprecate_patch`` take ``<constant>.id``, never a string."""
    constants = {name for name in dir(workflow_versions) if name.isupper()}
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"patched", "deprecate_patch"}
            ):
                continue
            (arg,) = node.args
            assert (
                isinstance(arg, ast.Attribute)
                and arg.attr == "id"
                and isinstance(arg.value, ast.Name)
                and arg.value.id in constants
            ), f"{path.relative_to(ROOT)}:{node.lineno}: patch ids live in shared/workflow_versions"
    ids = [patch.id for patch in workflow_versions.ALL_PATCHES]
    assert len(ids) == len(set(ids))
    listed = {getattr(workflow_versions, c) for c in constants} - {
        workflow_versions.RETENTION_DAYS,
        workflow_versions.MAX_OPEN_DAYS,
        workflow_versions.ALL_PATCHES,
    }
    assert listed == set(workflow_versions.ALL_PATCHES), "every Patch constant is in ALL_PATCHES"
