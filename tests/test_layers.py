"""The package's layers (`fewstep.LAYERS`, docs/layout.md) and a lean Snakefile parse.

Every `import` of a fewstep module is counted, at module level and inside functions alike:
a lazy import still ties the importer to what it imports, so it may neither point up a layer
nor close a cycle. Deferring an import keeps a heavy dependency out of a parse; it is no
licence to tangle the package.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fewstep
from tests.conftest import REPO

PACKAGE = REPO / "workflow" / "fewstep"
# Never imported while Snakemake parses the workflow: `snakemake -n` stays fast and runs
# where only the workflow's light dependencies are installed.
HEAVY = ("torch", "diffusers", "transformers", "pandas", "numpy")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str, path: Path) -> str:
    """The package a relative import in `path` starts from."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(path: Path, modules: set[str], module: str | None = None) -> set[str]:
    """The fewstep modules `path` (module `module`, by default its place in the package)
    imports anywhere in it; `from X import name` of a submodule imports the submodule."""
    module = module or module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(module, path).split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules and name != module}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def unit(module: str) -> str:
    """A module's unit: `families.<name>` for a family, else the top folder or module."""
    parts = module.split(".")[1:] or ["__init__"]
    return ".".join(parts[:2]) if parts[0] == "families" and len(parts) > 2 else parts[0]


def layer(unit_name: str) -> int | None:
    top = unit_name.split(".")[0]
    for number, units in enumerate(fewstep.LAYERS):
        if top in units:
            return number
    return None


def test_every_module_is_in_a_layer():
    assert {unit(m) for m in import_graph() if layer(unit(m)) is None} <= {"__init__"}


#: Edges still against the layers, none since the model registry moved into `registry/`
#: (issue 13); the test fails on a new edge and on a listed one that is gone.
UNRESOLVED: set[str] = set()


def allowed(importer: str, target: str) -> bool:
    source_unit, target_unit = unit(importer), unit(target)
    if target == "fewstep" or source_unit == target_unit:
        return True
    if target_unit == "families" and source_unit.startswith("families."):
        return True  # a family uses the contract (`families.base`) and shared parts
    if importer == "fewstep.families" and target_unit.startswith("families."):
        return True  # `FAMILIES` lists every family
    return layer(target_unit) < layer(source_unit)


def against_layers(graph: dict[str, set[str]]) -> set[str]:
    return {f"{a} -> {b}" for a, targets in graph.items() for b in targets if not allowed(a, b)}


def test_imports_point_down_the_layers_only():
    """A unit imports its own modules and lower layers; never a higher layer, never another
    unit of its own layer (`families` and `scoring`), never one family from another."""
    offending = against_layers(import_graph())
    new, gone = sorted(offending - UNRESOLVED), sorted(UNRESOLVED - offending)
    assert not new, "imports against fewstep.LAYERS:\n" + "\n".join(new)
    assert not gone, "fixed, remove from UNRESOLVED:\n" + "\n".join(gone)


def test_the_layer_rule_flags_upward_and_sideways_imports():
    graph = {
        "fewstep.core.io": {"fewstep.grid"},
        "fewstep.families.sd.tiny": {"fewstep.families.flux.tiny", "fewstep.families.base"},
        "fewstep.scoring.networks": {"fewstep.families.flux.models", "fewstep.registry.spec"},
        "fewstep.cli": {"fewstep.jobs.generate"},
    }
    assert against_layers(graph) == {
        "fewstep.core.io -> fewstep.grid",
        "fewstep.families.sd.tiny -> fewstep.families.flux.tiny",
        "fewstep.scoring.networks -> fewstep.families.flux.models",
    }


#: Imports of one family's modules from outside `families/` still to remove; the test fails on a
#: new one and on a listed one gone.
FAMILY_DOOR_UNRESOLVED: set[str] = set()


def behind_the_family_door(graph: dict[str, set[str]]) -> set[str]:
    """Imports of a family's own modules (`fewstep.families.<name>...`) from outside its folder:
    only the family list, `fewstep.families`, may name them."""
    return {
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if unit(b).startswith("families.") and unit(a) != unit(b) and a != "fewstep.families"
    }


def test_only_the_family_list_imports_a_family():
    """Grid, jobs, analysis and tracking reach a family through `fewstep.families.base.Family`
    only; one family never imports another."""
    offending = behind_the_family_door(import_graph())
    new, gone = sorted(offending - FAMILY_DOOR_UNRESOLVED), sorted(FAMILY_DOOR_UNRESOLVED - offending)
    assert not new, "imports of a family's modules from outside it:\n" + "\n".join(new)
    assert not gone, "fixed, remove from FAMILY_DOOR_UNRESOLVED:\n" + "\n".join(gone)
    assert not [line for line in workflow_imports() if line.startswith("from fewstep.families.")]


def test_the_family_door_rule_flags_family_imports():
    graph = {
        "fewstep.grid.inputs": {"fewstep.families.sd.family", "fewstep.families.base"},
        "fewstep.jobs.precompute": {"fewstep.families.sd.cell"},
        "fewstep.families": {"fewstep.families.flux.family"},
        "fewstep.families.sd.family": {"fewstep.families.sd.specs", "fewstep.families.resampler"},
    }
    assert behind_the_family_door(graph) == {
        "fewstep.grid.inputs -> fewstep.families.sd.family",
        "fewstep.jobs.precompute -> fewstep.families.sd.cell",
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, first repeated last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycles():
    """Lazy (function-level) imports count too: no cycle is hidden by deferring an import.
    The `UNRESOLVED` edges are left out: every cycle left runs through one of them."""
    graph = {
        a: {b for b in targets if f"{a} -> {b}" not in UNRESOLVED} for a, targets in import_graph().items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_imports_resolve_to_their_modules(tmp_path):
    source = tmp_path / "family.py"
    source.write_text("from . import base\nfrom .specs import SD15\nfrom .. import FAMILIES\n")
    modules = {"fewstep.families", "fewstep.families.sd.base", "fewstep.families.sd.specs"}
    assert imported_modules(source, modules, module="fewstep.families.sd.family") == modules


def workflow_imports() -> list[str]:
    """Every `from fewstep... import ...` line of the Snakefile and the rule files."""
    sources = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    lines = [line for path in sources for line in path.read_text().splitlines()]
    return [line for line in lines if line.startswith("from fewstep")]


def test_the_parse_check_runs_the_workflows_imports():
    imports = workflow_imports()
    assert "from fewstep.grid import Grid" in imports
    assert any("marker_path" in line for line in imports)


PARSE = """
import json, sys
from pathlib import Path
import yaml
sys.path.insert(0, sys.argv[1])
exec(sys.argv[2])  # the Snakefile's and the rules' own fewstep imports

for config_file in sys.argv[3:]:
    config = parse_config(yaml.safe_load(Path(config_file).read_text()))  # the Snakefile's STUDY
    grid, paths = Grid(config), Paths(config)
    resolved_path(config.to_dict(), paths.config_dir)
    stale_lock_hint(Path.cwd(), [config_file])
    for job in grid.jobs:
        grid.job_hash(job)
        first = grid.job(job)[0]
        [marker_path(config, name) for name in grid.generation_models(first)]
        grid.prompt_embeddings(paths, first) + grid.identity_embeddings(paths, first)
        paths.generation_record(job), paths.log("generate", job), paths.benchmark("generate", job)
        grid.job_score_hash(job)
        paths.score_record(job), paths.log("score", job), paths.benchmark("score", job)
    for cell in grid.cells:
        grid.cell_hash(grid.cell(cell.id))
        [marker_path(config, name) for name in grid.score_models(cell)]
        grid.score_anchor(cell)
    for cell in grid.trajectory_cells:
        paths.trajectory(cell.id), paths.log("trajectory", cell.id)
    for identity in grid.pictures:
        grid.identity(identity), paths.identity_embedding(identity)
    for name in ("insightface", "arcface-irse50"):
        marker_path(config, name), model_revision(config, name)
    [paths.table(name) for name in TABLES]
    [paths.report_figures(section) for section in SECTIONS]
    paths.summary, paths.per_image, paths.report_index, paths.report_tables
    paths.wandb_aggregate_record, paths.prompt_embedding("flux", "p", "1")
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))))
"""


@pytest.mark.parametrize("config_file", ["config/demo.yaml", "config.yaml"])
def test_parsing_the_workflow_imports_no_heavy_library(config_file):
    """What the Snakefile and its rules do at parse time, in a fresh interpreter: parse the
    config into its Study, Grid, Paths, every job's and cell's hash, inputs, outputs and logs."""
    script = f"HEAVY = {HEAVY!r}\n{PARSE}"
    imports = "\n".join(workflow_imports())
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "workflow"), imports, str(REPO / config_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
