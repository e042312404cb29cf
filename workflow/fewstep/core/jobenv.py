"""Environment the Snakefile hands to every job (locally and through Slurm)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import MutableMapping
from pathlib import Path

#: where torch's inductor keeps its FX graph, AOTAutograd and Triton kernel caches, read at each
#: compile (`torch._inductor.runtime.cache_dir_utils.cache_dir`); importing torch._dynamo (diffusers
#: does) sets it to torch's default, /tmp/torchinductor_<user>, where unset
INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"

#: the config file(s) this process read (`fewstep.cli` records them), for the commands hints name
CONFIG_FILES: list[str] = []


def config_option() -> str:
    """``--config <file>`` for a command an error message names: the files this process read,
    else the job's resolved config ($FEWSTEP_CONFIG), else a placeholder."""
    files = CONFIG_FILES or ([os.environ["FEWSTEP_CONFIG"]] if os.environ.get("FEWSTEP_CONFIG") else [])
    return "--config " + (" ".join(shlex.quote(f) for f in files) if files else "<your config>")


def export(package_dir: str | Path, config_file: str | Path) -> None:
    """Make `python -m fewstep` work in every job without installing the package.

    - PYTHONPATH gains the folder that holds the package;
    - PATH starts with this interpreter's folder, so `python` in a job command is
      the one running Snakemake (with --sdm conda, Snakemake puts the env first);
    - FEWSTEP_CONFIG names the resolved, content-addressed config the CLI reads.
    """
    env = os.environ
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_dir), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["FEWSTEP_CONFIG"] = str(config_file)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")


def share_compiled_kernels(cache_dir: str | Path, env: MutableMapping[str, str] = os.environ) -> str:
    """Inductor's caches in `cache_dir`/torchinductor (the sweep's cache folder) unless the user set
    $TORCHINDUCTOR_CACHE_DIR: each job of a run, on any node sharing the results folder, reuses
    kernels compiled once instead of its node's /tmp. Call before torch._dynamo is imported (see
    `INDUCTOR_CACHE`); returns the folder."""
    return env.setdefault(INDUCTOR_CACHE, os.path.abspath(Path(cache_dir) / "torchinductor"))
