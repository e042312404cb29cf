"""fewstep: how few denoising steps identity-preserved generation needs.

    snakemake --cores all                                   # the study (config.yaml)
    snakemake --cores all --configfile config/demo.yaml     # offline demo, tiny models

Cells and items come from fewstep.grid; paths from fewstep.core.paths; every rule
calls one `fewstep <command>` (workflow/fewstep/cli.py).
"""

import os
import sys
from pathlib import Path

from snakemake.utils import min_version

# 9.19 is the first to read profiles/<name>/profile.yaml; older ones would skip the profiles silently
min_version("9.19")

PACKAGE_DIR = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)

from fewstep.core import jobenv
from fewstep.core.config import resolved_path, write_resolved
from fewstep.core.errors import FewstepError
from fewstep.core.study import parse_config
from fewstep.grid import Grid
from fewstep.core.paths import CELL_PATTERN, JOB_PATTERN, Paths, one_of
from fewstep.core.resume import missing_cell_files, missing_files_hint, stale_lock_hint

# config.yaml is the default; a --configfile replaces it rather than merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


try:
    # The one config check, parsed once into the typed Study (fewstep.core.study) that the grid and
    # the rules read: workflow/schemas/config.schema.yaml with one-line errors naming the
    # key, defaults filled, cross-checks. snakemake.utils.validate is not run as well: it applies
    # the same schema with the same validator (JSON Schema 2020-12) and would only repeat this
    # check, with multi-line errors; what it saw beyond it, the config after defaults and
    # expansion, passes the schema by construction (tests/test_config.py checks the defaults and
    # the identity ids taken from file names).
    STUDY = parse_config(config)
    GRID = Grid(STUDY)
except FewstepError as err:
    sys.exit(f"fewstep: {err}")

PATHS = Paths(STUDY)
# Jobs read the validated config from this content-addressed copy (named by its
# hash) through $FEWSTEP_CONFIG. Keeping it out of params means a config change
# reruns only the jobs whose own params (e.g. a cell's hash) changed. It is
# written when jobs are about to run, so parsing (--lint, -n) writes nothing.
jobenv.export(PACKAGE_DIR, resolved_path(STUDY.to_dict(), PATHS.config_dir))
GPU = 0 if STUDY.device == "cpu" else 1
# GPU cards per GPU job, for profiles/slurm. Not FEWSTEP_GPUS: that one says how many cards
# this machine has (fewstep.core.gpus, which a local job's card lock reads).
os.environ["FEWSTEP_JOB_GPUS"] = str(GPU)
# Threads of the CPU-heavy rules (scoring, embeddings, trajectories, aggregation), at most
# --cores; Snakemake hands them to each job as OMP_NUM_THREADS, which torch and fewstep's
# onnxruntime sessions follow. Tiny models make these jobs import-bound: one thread each lets
# two run side by side on a small machine.
CPU_THREADS = 4 if STUDY.weights != "tiny" else 1

# After a kill, Snakemake's lock stays behind; say how to remove it (one line). A finished
# generation job whose images or manifests were deleted: name them and the command (one line).
if workflow.is_main_process and "--unlock" not in sys.argv:
    configfiles = workflow.overwrite_configfiles or []
    for hint in (
        stale_lock_hint(Path.cwd(), configfiles),
        missing_files_hint(missing_cell_files(GRID, PATHS), configfiles),
    ):
        if hint:
            print(hint, file=sys.stderr)


envvars:
    "FEWSTEP_CONFIG",
    "FEWSTEP_JOB_GPUS",
    "PYTHONPATH",


wildcard_constraints:
    backbone=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    adapter=r"[A-Za-z0-9][A-Za-z0-9_.-]*(\+[A-Za-z0-9][A-Za-z0-9_.-]*)?",
    steps=r"\d+",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    family=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    prompt=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    identity=r"[A-Za-z0-9_.-]+",
    # the labels and adapter files the sweep's families name (`Family.prompt_variants`, `reference_file`)
    variant=one_of(GRID.prompt_variant_labels),
    file=one_of(GRID.reference_files),
    reference=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


onstart:
    write_resolved(STUDY.to_dict(), PATHS.config_dir)


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/precompute.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/wandb.smk"


rule all:
    input:
        PATHS.report_index,
        [PATHS.trajectory(cell.id) for cell in GRID.trajectory_cells],
        PATHS.wandb_aggregate_record,
