"""`fewstep <command>`: the one entry point every Snakemake rule calls.

Each command takes the (resolved) config file plus the ids it works on, does
one job, and turns user-fixable errors into a single line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import ConfigError, DiskFullError, FewstepError, NetworkError, OutOfMemoryError

if TYPE_CHECKING:
    from fewstep.core.study import Study


def _study(args: argparse.Namespace) -> Study:
    """The command's config files, loaded and validated once into the `Study` its job takes."""
    from fewstep.core.errors import ConfigError
    from fewstep.core.study import load_study

    paths = args.config or ([os.environ["FEWSTEP_CONFIG"]] if os.environ.get("FEWSTEP_CONFIG") else [])
    if not paths:
        raise ConfigError("no configuration: pass --config FILE (or run through Snakemake)")
    study = load_study(paths)
    from fewstep.core import jobenv
    from fewstep.core.paths import Paths

    jobenv.CONFIG_FILES[:] = [str(path) for path in paths]  # for the commands error messages name

    os.environ.setdefault("FEWSTEP_CACHE_DIR", str(Paths(study).cache_dir))  # read by fewstep.faces
    return study


def _gpu_study(
    args: argparse.Namespace, setup: Callable[[Study, argparse.Namespace], None] | None = None
) -> Study:
    """The study of a GPU command, after `setup` (what must precede the imports), importing the
    model libraries (which need no card), then taking a free card (before torch starts CUDA)."""
    study, take_card = _gpu_study_card_later(args, setup)
    take_card()
    return study


def _gpu_study_card_later(
    args: argparse.Namespace, setup: Callable[[Study, argparse.Namespace], None] | None = None
) -> tuple[Study, Callable[[], None]]:
    """`_gpu_study` for a command that has work to do before it needs a card: the study, and
    what takes the card."""
    from fewstep.core import gpus

    study = _study(args)
    if setup is not None:
        setup(study, args)
    imported_s = gpus.warm_imports() if study.device != "cpu" else None
    early = "" if imported_s is None else f" (libraries imported before it, {imported_s:.1f} s)"

    def take_card() -> None:
        print(f"fewstep {args.command}: {gpus.claim(study.device)}{early}", file=sys.stderr, flush=True)

    return study, take_card


def cmd_validate(args: argparse.Namespace) -> None:
    from fewstep.grid import Grid

    study = _study(args)
    grid = Grid.of(study)
    print(
        f"{study.sweep}: {len(grid.cells)} cells, {sum(len(grid.items_of(c)) for c in grid.cells)} "
        f"images, weights={study.weights}"
    )
    for cell in grid.cells:
        items = grid.items_of(cell)
        picture = ("reference", "references") if grid.reads_references(cell) else ("identity", "identities")
        crossed = [len({getattr(item, key) for item in items}) for key in ("identity", "prompt", "seed")]
        words = [picture, ("prompt", "prompts"), ("seed", "seeds")]
        counts = " x ".join(f"{n} {word[n != 1]}" for n, word in zip(crossed, words, strict=True))
        print(f"  {cell.id}: {len(items)} {'item' if len(items) == 1 else 'items'} ({counts})")


def cmd_estimate(args: argparse.Namespace) -> None:
    from fewstep.analysis.estimate import FIGURES, cards, estimate, render

    card = args.card or next(iter(sorted(cards(FIGURES))), "none")
    names = ", ".join(str(path) for path in args.config or [os.environ.get("FEWSTEP_CONFIG", "")])
    print(render(estimate(_study(args), card), names))


def snakemake_configfiles(argv: list[str]) -> list[str]:
    """The files that Snakemake arguments `argv` name with ``--configfile(s)``."""
    files: list[str] = []
    taking = False
    for arg in argv:
        name, equals, value = arg.partition("=")
        if name in ("--configfile", "--configfiles"):
            taking = not equals
            files += [value] if equals else []
        elif taking and not arg.startswith("-"):
            files.append(arg)
        else:
            taking = False
    return files


def nested_config_overrides(argv: list[str]) -> list[str]:
    """Snakemake arguments `argv` with each dotted ``--config`` key (``wandb.mode=disabled``, which
    Snakemake rejects with a traceback) written as the nested override it takes
    (``wandb={mode: disabled}``; Snakemake merges nested overrides into the config key by key)."""
    from fewstep.core.config import nested_override

    out: list[str] = []
    taking = False
    for arg in argv:
        if arg in ("--config", "-C"):
            taking = True
        elif arg.startswith("-"):
            taking = False
        elif taking and "=" in arg and "." in arg.partition("=")[0]:
            name, _, value = arg.partition("=")
            arg = nested_override(name, value)
            print(f"fewstep snakemake: --config {name}={value} read as --config '{arg}'", file=sys.stderr)
        out.append(arg)
    return out


def cmd_snakemake(args: argparse.Namespace) -> None:
    """Check every ``--configfile`` (exists, valid YAML), turn dotted ``--config`` keys into nested
    overrides, then run Snakemake with the arguments.

    Snakemake reads config files in its own command line, before the workflow runs, and answers a
    missing file or a YAML error with a traceback or a line naming neither file nor line.
    """
    from fewstep.core.config import read_config_file

    for path in snakemake_configfiles(args.snakemake_args):
        read_config_file(path)
    argv = nested_config_overrides(args.snakemake_args)
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *argv])


def cmd_config_reference(args: argparse.Namespace) -> None:
    from fewstep.core.config import reference_markdown

    text = reference_markdown()
    if args.out:
        from fewstep.core.io import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        print(text, end="")


def cmd_prepare_model(args: argparse.Namespace) -> None:
    from fewstep.jobs.prepare import prepare_model

    print(prepare_model(_study(args), args.model))


def cmd_embed_prompts(args: argparse.Namespace) -> None:
    study = _gpu_study(args)
    from fewstep.jobs.precompute import embed_prompts

    embed_prompts(study, args.family, args.prompt, args.variant, args.role)


def cmd_embed_references(args: argparse.Namespace) -> None:
    study = _gpu_study(args)
    from fewstep.jobs.precompute import embed_references

    embed_references(study, args.family, args.file, args.reference)


def cmd_embed_identities(args: argparse.Namespace) -> None:
    from fewstep.jobs.precompute import embed_identities

    embed_identities(_study(args), args.identity)


def _cell_or_job(command: str, args: argparse.Namespace) -> None:
    if (args.cell is None) == (args.job is None):
        raise ConfigError(
            f"{command} takes one of --cell <backbone>/<adapter>/<steps> or --job <backbone>/<adapter>"
        )


def _tracked_cells(
    study: Study, args: argparse.Namespace, stage: str, job, runs, log, output, **options: Any
) -> None:
    """`--cell`: `job.run` inside one W&B run (`runs.job_run`). `--job`: `job.run_job` for
    every cell of the job, then one W&B run per cell, as for a job of one cell;
    `log(tracked, path)` logs a cell's `output(paths, cell_id)` file; `options` go to the job.
    The caller imports the modules: each command's imports stay its own."""
    from fewstep.core.paths import Paths
    from fewstep.grid import Grid

    if args.cell is not None:
        with runs.job_run(study, stage, args.cell) as tracked:
            log(tracked, job.run(study, args.cell, args.out, batch_size=args.batch_size, **options))
        return
    record = job.run_job(study, args.job, batch_size=args.batch_size, **options)
    from fewstep.core import gpus

    gpus.release_when_done(args.command)  # the W&B runs below need no card
    for cell in Grid.of(study).job(args.job):
        with runs.job_run(study, stage, cell.id) as tracked:
            log(tracked, output(Paths(study), cell.id))
    print(f"{args.job}: record -> {record}")


def _share_compiled_kernels(study: Study, args: argparse.Namespace) -> None:
    """A job that compiles keeps inductor's caches in the sweep's cache folder (`jobenv`), set
    before anything imports torch._dynamo. Kernels are the same wherever cached: no output changes."""
    from fewstep.core import jobenv
    from fewstep.core.paths import Paths
    from fewstep.grid import Grid

    grid = Grid.of(study)
    cells = [grid.cell(args.cell)] if args.cell is not None else grid.job(args.job)
    if any(grid.acceleration(cell).compile != "none" for cell in cells):
        jobenv.share_compiled_kernels(Paths(study).cache_dir)


def cmd_generate(args: argparse.Namespace) -> None:
    _cell_or_job("generate", args)
    study = _gpu_study(args, setup=_share_compiled_kernels)
    from fewstep.core.paths import Paths
    from fewstep.jobs import generate
    from fewstep.tracking import runs

    _tracked_cells(study, args, "generate", generate, runs, runs.Run.log_manifest, Paths.manifest)


def cmd_score(args: argparse.Namespace) -> None:
    _cell_or_job("score", args)
    study, take_card = _gpu_study_card_later(args)  # face metrics on the CPU come first
    from fewstep.core.paths import Paths
    from fewstep.jobs import score
    from fewstep.tracking import runs

    _tracked_cells(study, args, "score", score, runs, runs.Run.log_scores, Paths.scores, take_card=take_card)


def cmd_trajectory(args: argparse.Namespace) -> None:
    study = _gpu_study(args)
    from fewstep.jobs.trajectory import run
    from fewstep.tracking import runs

    with runs.job_run(study, "trajectory", args.cell) as tracked:
        tracked.log_trajectory(run(study, args.cell, args.out))


def cmd_aggregate(args: argparse.Namespace) -> None:
    from fewstep.analysis.aggregate import run

    run(_study(args), args.out)


def cmd_report(args: argparse.Namespace) -> None:
    from fewstep.analysis.report import run

    run(_study(args), args.summary, args.out)


def cmd_wandb_aggregate(args: argparse.Namespace) -> None:
    from fewstep.core.io import atomic_write_json
    from fewstep.tracking import runs

    study = _study(args)
    with runs.job_run(study, "aggregate") as tracked:
        logged = tracked.log_sweep()
        record = runs.run_record(tracked, logged)
    atomic_write_json(args.out, record)
    print(f"W&B aggregate run ({record['mode']}): {sum(map(len, logged.values()))} items -> {args.out}")


def cmd_wandb_workspace(args: argparse.Namespace) -> None:
    from fewstep.tracking import workspace

    study = _study(args)
    if args.out:
        from fewstep.core.io import atomic_write_json

        entity = args.entity or study.wandb.entity or "your-entity"
        atomic_write_json(args.out, workspace.spec(study, entity))
        print(f"W&B workspace spec of sweep {study.sweep} -> {args.out}")
    else:
        print(f"W&B workspace saved: {workspace.save(study, args.entity)}")


def cmd_wandb_sync(args: argparse.Namespace) -> None:
    from fewstep.tracking.runs import sync

    sync(_study(args), dry_run=args.dry_run)


def parser() -> argparse.ArgumentParser:
    from fewstep import __version__

    root = argparse.ArgumentParser(prog="fewstep", description=__doc__.splitlines()[0])
    root.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = root.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "--config", nargs="+", type=Path, help="config YAML file(s), later win (default: $FEWSTEP_CONFIG)"
        )
        if name not in ("validate", "wandb-sync", "wandb-workspace"):  # the commands rules run as jobs
            p.add_argument(
                "--attempt",
                type=int,
                help="Snakemake's attempt: a retry runs only after an error a retry can change "
                "(CUDA out of memory, the network)",
            )
        p.set_defaults(func=func)
        return p

    add("validate", cmd_validate, "check a config and list its cells with their items")
    add(
        "estimate", cmd_estimate, "images, GPU hours, disk and downloads of a sweep, before running it"
    ).add_argument(
        "--card", help="card whose benchmarks/results figures to use (default: the first, e.g. h200)"
    )
    sub.add_parser(  # main() hands its arguments to cmd_snakemake unparsed
        "snakemake",
        help="snakemake with the arguments that follow, after checking each --configfile (one-line errors)",
    )
    sub.add_parser(
        "config-reference", help="every config key with type, default and meaning (config/README.md)"
    ).set_defaults(func=cmd_config_reference)
    sub.choices["config-reference"].add_argument("--out", type=Path, help="write here (default: stdout)")
    add(
        "prepare-model", cmd_prepare_model, "download, build (tiny) or configure (random) one model"
    ).add_argument("--model", required=True, help="registry name, e.g. flux-schnell or insightface")
    p = add("embed-prompts", cmd_embed_prompts, "precompute prompt embeddings (all, or those named)")
    p.add_argument("--family", help="one model family (default: every family of the cells)")
    p.add_argument("--prompt", nargs="+", help="prompt ids (default: every prompt)")
    p.add_argument(
        "--variant",
        help="one prompt variant's label, e.g. L512 (FLUX's T5 length) or an SD negative prompt's N<hash> "
        "(default: every one the cells use)",
    )
    p.add_argument(
        "--role",
        help="one prompt group: a role's prompts (identity, style, object) or those without one (any); "
        "default: every prompt the variant's cells render",
    )
    p = add(
        "embed-references",
        cmd_embed_references,
        "precompute IP-Adapter reference embeddings",
    )
    p.add_argument("--family", help="e.g. sd15 or sdxl (default: every family of the adapter cells)")
    p.add_argument("--file", help="adapter file whose image encoder embeds, e.g. plain or plus (SD)")
    p.add_argument("--reference", nargs="+", help="reference ids (default: every one the cells read)")
    add(
        "embed-identities", cmd_embed_identities, "precompute identity embeddings (all, or those named)"
    ).add_argument("--identity", nargs="+", help="identity ids (default: every identity)")
    for name, func, help_ in (
        ("generate", cmd_generate, "generate every image of one cell, or of every cell of one job"),
        ("score", cmd_score, "score every image of one cell, or of every cell of one job"),
        ("trajectory", cmd_trajectory, "decode and score x0 at every step for a few items of one cell"),
    ):
        p = add(name, func, help_)
        if name != "trajectory":
            p.add_argument("--cell", help="cell id <backbone>/<adapter>[+<acceleration>]/<steps>")
            p.add_argument(
                "--job", help="generation job <backbone>/<adapter>[+<acceleration>]: all its step counts"
            )
        else:
            p.add_argument(
                "--cell", required=True, help="cell id <backbone>/<adapter>[+<acceleration>]/<steps>"
            )
        p.add_argument("--out", type=Path, help="output table of --cell (default: the workflow's path)")
        if name != "trajectory":
            p.add_argument("--batch-size", type=int, help="images per batch (default: from the config)")
    add("aggregate", cmd_aggregate, "summarise all cells").add_argument(
        "--out", type=Path, help="summary table (default: the workflow's path); the other tables go beside it"
    )
    p = add("report", cmd_report, "figures, grids and the HTML page")
    p.add_argument("--summary", required=True, type=Path, help="the summary.csv that `aggregate` wrote")
    p.add_argument("--out", type=Path, help="the report page (default: reports/<sweep>/index.html)")
    add(
        "wandb-aggregate", cmd_wandb_aggregate, "log the sweep's tables, figures and report to one W&B run"
    ).add_argument("--out", type=Path, required=True, help="JSON record of what was logged")
    p = add("wandb-workspace", cmd_wandb_workspace, "save the sweep's W&B workspace (panels and grids)")
    p.add_argument("--entity", help="W&B user or team (default: config wandb.entity, else the API key's)")
    p.add_argument("--out", type=Path, help="write the workspace spec as JSON instead (offline)")
    add("wandb-sync", cmd_wandb_sync, "upload the sweep's offline W&B runs (`wandb sync`)").add_argument(
        "--dry-run", action="store_true", help="list the runs without uploading"
    )
    return root


def out_of_memory(args: argparse.Namespace) -> OutOfMemoryError:
    """CUDA ran out of memory: say where, and how the retry helps."""
    batch = getattr(args, "batch_size", None)
    where = f" in cell {args.cell}" if getattr(args, "cell", None) else ""
    where = f" in job {args.job}" if getattr(args, "job", None) else where
    return OutOfMemoryError(
        f"CUDA out of memory{f' at batch size {batch}' if batch else ''}{where}; finished images are kept; "
        "Snakemake retries with half the batch (rule retries), or lower the batch size in the config, "
        "or set memory.fp8_weights / memory.offload"
    )


#: how libraries that write natively say ENOSPC without an OSError (safetensors, pyarrow, torch)
NO_SPACE = ("No space left on device", "os error 28", "errno 28")


def disk_full(err: BaseException) -> DiskFullError | None:
    """The full-disk error somewhere in `err`'s chain (wandb, pyarrow and PIL wrap or re-raise it;
    safetensors and torch's writers raise their own types, naming only the OS error)."""
    while err is not None:
        if isinstance(err, DiskFullError):
            return err
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return DiskFullError(err.filename or "the results folder")
        if any(text in str(err) for text in NO_SPACE):
            return DiskFullError("an output file")
        err = err.__cause__ or err.__context__
    return None


#: the options that say which job of a rule a command is (the others say how it runs)
JOB_OPTIONS = (
    "cell",
    "job",
    "model",
    "family",
    "file",
    "variant",
    "prompt",
    "identity",
    "reference",
)


def _no_retry_note(args: argparse.Namespace) -> Path | None:
    """Where a job records an error no retry can fix, for the rule's next attempt to see: one
    file per job (`JOB_OPTIONS`), so two jobs of one rule never read each other's."""
    if getattr(args, "attempt", None) is None:
        return None
    from fewstep.core.paths import Paths

    values = [getattr(args, name, None) for name in JOB_OPTIONS]
    label = "/".join(
        ",".join(map(str, v)) if isinstance(v, list) else str(v) for v in values if v is not None
    )
    return Paths(_study(args)).no_retry_note(args.command, label)


def _run(args: argparse.Namespace) -> None:
    try:
        args.func(args)
    except Exception as err:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(err, torch.OutOfMemoryError):
            raise out_of_memory(args) from err
        full = disk_full(err)
        if full is None or full is err:
            raise
        raise full from err


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user-fixable error is one line on stderr and exit 1.

    Snakemake retries a failed job (`--attempt` > 1): a generate or score job with half the
    batch after CUDA ran out of memory, a download after the network failed. Any other error
    would only fail again (Snakemake cannot tell errors apart), so the first attempt leaves a
    note and the retries repeat its line at once instead of working.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["snakemake"]:  # every later argument is Snakemake's, options included
        args = argparse.Namespace(command="snakemake", func=cmd_snakemake, snakemake_args=argv[1:])
    else:
        args = parser().parse_args(argv)
    try:
        note = _no_retry_note(args)
        if note is not None and args.attempt > 1 and note.exists():
            raise FewstepError(
                f"{note.read_text().strip()} (not retried: only CUDA out of memory and network errors are)"
            )
        if note is not None:
            note.unlink(missing_ok=True)
        try:
            _run(args)
        except Exception as err:
            if note is not None and not isinstance(err, OutOfMemoryError | NetworkError):
                from fewstep.core.io import atomic_write_text

                line = str(err) if isinstance(err, FewstepError) else f"{type(err).__name__}: {err}"
                with contextlib.suppress(OSError):  # e.g. the disk is full
                    atomic_write_text(note, line.splitlines()[0] if line else type(err).__name__)
            raise
    except FewstepError as err:
        print(f"fewstep {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
