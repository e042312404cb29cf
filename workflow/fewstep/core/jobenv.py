"""Environment the Snakefile hands to every job (locally and through Slurm)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


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
