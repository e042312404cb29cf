"""Shared fixtures: the demo config pointed at temporary folders, tiny models built once."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# pytest-xdist runs a worker per core: one torch thread each (with two per worker on 2 cores, the
# quick subset took 8 min 33 s; with one, 3 min 58 s; serial, 6 min 59 s)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


#: the test modules with a test on the demo sweep (the session's `demo_run`)
DEMO_MODULES = frozenset(
    path.name for path in Path(__file__).parent.glob("test_*.py") if "demo_run" in path.read_text()
)


def pytest_collection_modifyitems(items):
    """Every test on the demo sweep is `slow`: `pytest -m "not slow"` never runs the workflow.
    The modules with such tests come first (`pytest_xdist_make_scheduler`)."""
    for item in items:
        if "demo_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            if item.path.name not in DEMO_MODULES:  # xdist would build the demo on two workers
                raise pytest.UsageError(
                    f"{item.nodeid} reaches demo_run through another fixture: name demo_run in "
                    f"{item.path.name} so DEMO_MODULES in tests/conftest.py has it"
                )
    items.sort(key=lambda item: item.path.name not in DEMO_MODULES)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`scripts/test.sh`), each module runs whole on one worker, so its
    fixtures are built once, and the modules on the demo sweep run together, first, on one
    worker: the session's demo runs once while the other workers take the rest.

    xdist's own `--dist loadgroup` cannot do it: it renames tests through an attribute pytest 9
    no longer reads."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # scopes in collection order: the demo's first

    class DemoModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "demo sweep" if Path(module).name in DEMO_MODULES else module

    return DemoModulesTogether(config, log)


def study_of(config):
    """The `Study` the package's entry points take, parsed from a test's validated config dict (the
    tests build and change dicts; a `Study` passes through as it is)."""
    from fewstep.core.study import Study

    return config if isinstance(config, Study) else Study.of(config)


def demo_yaml() -> dict:
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


@pytest.fixture
def raw_demo() -> dict:
    """The demo config as a user wrote it (not validated)."""
    return demo_yaml()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fewstep")


@pytest.fixture(scope="session")
def tiny_config(tiny_root) -> dict:
    """Validated demo config whose tiny models are built (once per test session)."""
    from fewstep.core.config import validate
    from fewstep.grid import Grid
    from fewstep.jobs.prepare import prepare_model

    raw = demo_yaml()
    raw["results_dir"] = str(tiny_root / "results")
    raw["models_dir"] = str(tiny_root / "models")
    raw["reports_dir"] = str(tiny_root / "reports")
    config = validate(raw)
    for name in Grid(study_of(config)).models:
        prepare_model(study_of(config), name)
    return config


@pytest.fixture(scope="session")
def embedded(tiny_config) -> dict:
    """The tiny config with its prompt and identity embeddings computed (once per session)."""
    from fewstep.jobs import precompute

    precompute.embed_prompts(study_of(tiny_config))
    precompute.embed_identities(study_of(tiny_config))
    return tiny_config


@pytest.fixture
def config(tiny_config) -> dict:
    return copy.deepcopy(tiny_config)


def snakemake(
    workdir: Path, *args: str, configfile: Path | None = None, timeout: int = 900, env: dict | None = None
):
    """Run the real Snakemake CLI on the repo's Snakefile in `workdir`."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    if configfile is not None:  # last: it takes several values, and would swallow a target
        command += ["--configfile", str(configfile)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The README's demo sweep, run once per session through Snakemake into a fresh folder.

    As a user's first run: an empty HOME and TMPDIR, no WANDB_* variables (the demo
    config's offline W&B mode decides), no network where `unshare --net` works, and a space
    in the working folder's path.
    Shared by the workflow, report-page and W&B tests.
    """
    from wandb_harness import UNSHARE, clean_env

    # a space in the folder, as in many users' paths: every path of every rule must be quoted
    workdir = tmp_path_factory.mktemp("demo") / "my demo"
    (workdir / "home").mkdir(parents=True)
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    command += ["--configfile", str(REPO / "config" / "demo.yaml"), "--cores", "2", "-q"]
    if UNSHARE:
        command = ["unshare", "--net", *command]
    import subprocess

    result = subprocess.run(
        command, env=clean_env(workdir / "home"), capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """Tiny SD1.5 and SDXL folders and a tiny h94/IP-Adapter folder, built once per session."""
    from fewstep.families.sd import specs, tiny

    root = tmp_path_factory.mktemp("sd")
    for family in specs.FAMILIES.values():
        tiny.build_tiny_pipeline(family, root / family.folder)
    tiny.build_tiny_ip_adapter(root / "IP-Adapter", list(specs.FAMILIES.values()), ["plain", "plus"])
    return root
