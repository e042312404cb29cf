"""The conda envs of `--sdm conda`: one per kind of job plus the scheduler's, each pinning
exactly what pyproject.toml pins, and each holding what its jobs (or the parse) import."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.test_layers import PACKAGE, PARSE, module_name, package_of, workflow_imports

ENVS = REPO / "envs"
RULES = REPO / "workflow" / "rules"
SCHEDULER_ENV = ENVS / "snakemake.yaml"


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return dict(pin.split("==") for pin in project["dependencies"])


def env_pins(env: Path) -> dict[str, str]:
    spec = yaml.safe_load(env.read_text())
    (pip,) = [entry["pip"] for entry in spec["dependencies"] if isinstance(entry, dict)]
    names = [pin.split("==")[0] for pin in pip]
    assert len(names) == len(set(names)), f"{env.name} lists a package twice: {sorted(names)}"
    return dict(pin.split("==") for pin in pip)


def rule_jobs() -> dict[str, tuple[str, str]]:
    """Every rule's conda env (a path from the rule file) and its `python -m fewstep` command."""
    jobs = {}
    for path in sorted(RULES.glob("*.smk")):
        for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", path.read_text(), re.M | re.S):
            (env,) = re.findall(r'conda:\s+"([^"]+)"', body)
            (command,) = re.findall(r'"python -m fewstep ([\w-]+)', body)
            jobs[rule] = ((path.parent / env).resolve().relative_to(REPO).as_posix(), command)
    return jobs


def test_every_env_pins_exactly_what_pyproject_pins():
    pins = pyproject_pins()
    envs = sorted(ENVS.glob("*.yaml"))
    assert SCHEDULER_ENV in envs and len(envs) >= 4
    for env in envs:
        assert yaml.safe_load(env.read_text())["name"] == env.stem
        own = env_pins(env)
        assert own == {name: pins.get(name) for name in own}, env.name


def test_every_rule_names_an_env_of_envs():
    jobs = rule_jobs()
    assert len(jobs) >= 10
    named = {env for env, _ in jobs.values()}
    assert named <= {f"envs/{env.name}" for env in ENVS.glob("*.yaml")}
    assert "envs/snakemake.yaml" not in named, "the scheduler's env runs no job"


# --- what a job imports -------------------------------------------------------------------
# A unit is a module's top-level code (name None), a top-level function or class (its body
# without methods) or a method ("Class.method"). A reached unit reaches what it imports, the
# module-level names it uses and the top-level code of its module and packages. Calls
# through objects are matched by name: an attribute `x.run` reached anywhere reaches every
# `run` method of a reached class and every `run` of a module imported as a whole; dunder
# methods come with their class. So the third-party imports found are an over-approximation
# of what the job can import (calls through `getattr` strings would escape it; fewstep has
# none). `if TYPE_CHECKING:` blocks never run; an import inside `try: ... except ImportError`
# marks an optional dependency.

Unit = tuple[str, str | None]


def source_path(module: str) -> Path:
    path = PACKAGE.parent / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


class Module:
    """One fewstep module's units and the names its top-level code binds."""

    def __init__(self, name: str, modules: frozenset[str]):
        self.name, self.modules = name, modules
        self.path = source_path(name)
        tree = ast.parse(self.path.read_text(), str(self.path))
        self.units: dict[str | None, list[ast.AST]] = {None: []}
        self.methods: dict[str, list[str]] = {}  # class -> its method units
        for node in tree.body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                continue  # annotations only: never runs
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.units[node.name] = [node]
            elif isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
                rest = [n for n in node.body if n not in methods]
                self.units[node.name] = [*node.decorator_list, *node.bases, *node.keywords, *rest]
                for method in methods:
                    self.units[f"{node.name}.{method.name}"] = [method]
                self.methods[node.name] = [f"{node.name}.{method.name}" for method in methods]
            else:
                self.units[None].append(node)
        self.bound = {
            alias.asname or alias.name.split(".")[0]: node
            for node in self.units[None]
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }

    def imports(self, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
        """(module, name) pairs an import binds: name None for a module imported whole."""
        if isinstance(node, ast.Import):
            return [(alias.name, None) for alias in node.names]
        source = node.module
        if node.level:
            base = package_of(self.name, self.path).split(".")
            source = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
        return [
            (f"{source}.{alias.name}", None)
            if f"{source}.{alias.name}" in self.modules
            else (source, alias.name)
            for alias in node.names
        ]


@cache
def package_modules() -> dict[str, Module]:
    names = frozenset(module_name(path) for path in PACKAGE.rglob("*.py"))
    return {name: Module(name, names) for name in names}


def optional_imports(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside `try:` blocks that catch ImportError."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
            for handler in node.handlers
        ):
            found.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return found


def third_party(top: str) -> bool:
    return top not in sys.stdlib_module_names and top not in ("fewstep", "__future__")


def reached_imports(roots: set[Unit], excluded: set[Unit] = frozenset()) -> tuple[set[str], set[str]]:
    """Third-party top-level modules the units reachable from `roots` import: (required, optional);
    a module imported under `except ImportError` anywhere they reach is optional everywhere."""
    modules = package_modules()
    reached: set[Unit] = set()
    todo = list(roots)
    attributes: set[str] = set()
    whole: set[str] = set()  # fewstep modules imported as module objects
    required: set[str] = set()
    optional: set[str] = set()

    def target(module: str, name: str | None) -> None:
        """Reach `name` of `module` (a def, or what its top-level code bound that name to)."""
        parts = module.split(".")
        todo.extend(
            (".".join(parts[:n]), None) for n in range(1, len(parts) + 1) if ".".join(parts[:n]) in modules
        )
        if module not in modules:
            return
        if name is None:
            whole.add(module)
        elif name in modules[module].units:
            todo.append((module, name))
        elif name in modules[module].bound:
            for source, inner in modules[module].imports(modules[module].bound[name]):
                if inner == name or source.endswith(f".{name}") or inner is None:
                    target(source, inner)

    def called(method: str) -> bool:
        return method in attributes or (method.startswith("__") and method.endswith("__"))

    def visit(unit: Unit) -> None:
        module = modules[unit[0]]
        target(module.name, None)
        for node in module.units[unit[1]]:
            maybe = optional_imports(node)
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    for source, name in module.imports(inner):
                        top = source.split(".")[0]
                        if third_party(top):
                            (optional if id(inner) in maybe else required).add(top)
                        elif top == "fewstep":
                            target(source, name)
                elif isinstance(inner, ast.Call) and ast.unparse(inner.func) == "importlib.import_module":
                    (literal,) = inner.args
                    required.add(literal.value.split(".")[0])
                elif isinstance(inner, ast.Name) and (inner.id in module.units or inner.id in module.bound):
                    target(module.name, inner.id)
                elif isinstance(inner, ast.Attribute):
                    attributes.add(inner.attr)

    while todo:
        while todo:
            unit = todo.pop()
            if unit not in reached and unit not in excluded:
                reached.add(unit)
                visit(unit)
        for name, mod in modules.items():  # calls through objects and module attributes, by name
            for cls in (cls for cls in mod.methods if (name, cls) in reached):
                todo.extend((name, method) for method in mod.methods[cls] if called(method.split(".")[1]))
            if name in whole:
                todo.extend(
                    (name, unit) for unit in mod.units if unit and "." not in unit and unit in attributes
                )
        todo = [unit for unit in todo if unit not in reached]
    return required - optional, optional


def command_imports(command: str) -> set[str]:
    """What `python -m fewstep <command>` can import: `fewstep.__main__`, cli.py but for the
    other commands' functions (the parser only names them), and cmd_<command>."""
    function = "cmd_" + command.replace("-", "_")
    cli = package_modules()["fewstep.cli"]
    assert function in cli.units, f"no {function} in cli.py"
    others = {
        ("fewstep.cli", name) for name in cli.units if name and name.startswith("cmd_") and name != function
    }
    roots = {("fewstep.__main__", None)} | {("fewstep.cli", name) for name in cli.units} - others
    required, _ = reached_imports(roots, others)
    return required


#: Imported by name at run time, not by an `import` fewstep's code shows: pandas reads and
#: writes the parquet tables through pyarrow.
IMPORTED_BY_NAME = {"pandas": {"pyarrow"}}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    """Each top-level module's installed distributions (canonical names), run-time extras included."""
    installed = packages_distributions()
    missing = sorted(module for module in modules if module not in installed)
    assert not missing, f"not installed in this venv, so unchecked: {missing}"
    found = {module: {canonicalize_name(name) for name in installed[module]} for module in modules}
    for module, extra in IMPORTED_BY_NAME.items():
        if module in modules:
            found.update({name: {canonicalize_name(name)} for name in extra})
    return found


def requirement_closure(packages: set[str]) -> set[str]:
    """`packages` and everything they require (extras and markers that do not apply left out)."""
    closure, todo = set(), [canonicalize_name(name) for name in packages]
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in needs:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return closure


def uncovered(env: Path, modules: set[str]) -> list[str]:
    """The modules none of whose distributions `env`'s packages install."""
    closure = requirement_closure(set(env_pins(env)))
    return sorted(module for module, names in distributions(modules).items() if not names & closure)


@pytest.mark.parametrize("rule", sorted(rule_jobs()))
def test_every_rule_env_holds_what_its_job_imports(rule):
    env, command = rule_jobs()[rule]
    imports = command_imports(command)
    assert "yaml" in imports  # every job reads its config (fewstep.core.config)
    assert uncovered(REPO / env, imports) == [], f"{rule} runs `fewstep {command}` in {env}"


def test_the_import_walk_follows_lazy_imports_and_method_calls():
    """A lazy import, a call through an object and a TYPE_CHECKING import, on known jobs."""
    assert {"diffusers", "wandb", "pandas"} <= command_imports("generate")  # via Family methods, runs
    assert "wandb_workspaces" in command_imports("wandb-workspace")
    assert {"matplotlib", "kneed"} <= command_imports("report")
    assert "matplotlib" not in command_imports("generate") and "lpips" not in command_imports("aggregate")
    required, _ = reached_imports({("fewstep.families.fp8", "quantize_rowwise")})
    assert "torchao" in required
    required, optional = reached_imports({("fewstep.families.fp8", "check_fp8")})
    assert "torchao" in optional and "torchao" not in required


def test_coverage_fails_for_an_env_without_a_needed_package(tmp_path):
    env = tmp_path / "lean.yaml"
    env.write_text(yaml.safe_dump({"name": "lean", "dependencies": ["pip", {"pip": ["pandas==3.1.1"]}]}))
    # numpy: pandas requires it; pyarrow: pandas imports it by name for parquet
    assert uncovered(env, {"pandas", "numpy", "matplotlib"}) == ["matplotlib", "pyarrow"]


def parse_time_imports(config_file: str) -> set[str]:
    """Third-party top-level modules loaded by the Snakefile's parse (tests/test_layers.py's)."""
    files = (
        "{name.split('.')[0] for name, module in sys.modules.items() if getattr(module, '__file__', None)}"
    )
    script = f"HEAVY = ()\n{PARSE}\nprint(json.dumps(sorted({files})))"
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "workflow"), "\n".join(workflow_imports()), config_file],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    return {name for name in loaded if third_party(name) and not name.startswith("_")}


def test_the_scheduler_env_holds_what_parsing_imports():
    """The lean env runs Snakemake's parse: its own imports (snakemake.utils) and fewstep's."""
    imports = parse_time_imports(str(REPO / "config" / "demo.yaml")) | {"snakemake"}
    assert {"yaml", "jsonschema"} <= imports
    assert uncovered(SCHEDULER_ENV, imports) == []
    assert not requirement_closure(set(env_pins(SCHEDULER_ENV))) & {"torch", "diffusers", "transformers"}
