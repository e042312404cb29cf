from fewstep.core.study import prompt_group, prompt_rule
from fewstep.registry.catalog import marker_path, model_revision


def generate_inputs(wildcards):
    """Models and precomputed embeddings (prompts; identities or references) one cell or
    generation job needs (never a text or image encoder)."""
    if "steps" in wildcards.keys():
        cell = GRID.cell(CELL_PATTERN.format(**wildcards))
    else:  # a job's cells share backbone, adapter and acceleration: they need the same inputs
        cell = GRID.job(JOB_PATTERN.format(**wildcards))[0]
    inputs = [marker_path(STUDY, name) for name in GRID.generation_models(cell)]
    inputs += GRID.prompt_embeddings(PATHS, cell)
    return inputs + GRID.identity_embeddings(PATHS, cell)


def trajectory_score_inputs(wildcards):
    """The scoring networks a trajectory job scores its cell's x0 images with."""
    cell = GRID.cell(CELL_PATTERN.format(**wildcards))
    return [marker_path(STUDY, name) for name in GRID.trajectory_score_models(cell)]


def identity_picture(wildcards):
    """This identity's picture file, when it is one that exists: a newer picture re-embeds only
    its own identity (a missing one is the job's one-line error, not Snakemake's)."""
    image = GRID.identity(wildcards.identity)["image"]
    return [image] if not image.startswith("builtin:") and Path(image).is_file() else []


def reference_picture(wildcards):
    """This reference's picture file, when it is one that exists (as `identity_picture`)."""
    image = GRID.reference(wildcards.reference)["image"]
    return [image] if not image.startswith("builtin:") and Path(image).is_file() else []


def score_inputs(wildcards):
    """The job's generation record, the scoring models of its cells, and the anchor cells'
    generation jobs (LPIPS to them)."""
    cells = GRID.job(JOB_PATTERN.format(**wildcards))
    models = {name for cell in cells for name in GRID.score_models(cell)}
    anchors = {GRID.score_anchor(cell) for cell in cells} - {None}
    jobs = {cells[0].job} | {anchor.job for anchor in anchors}
    return [marker_path(STUDY, name) for name in sorted(models)] + [
        PATHS.generation_record(job) for job in sorted(jobs)
    ]


def attempt_number(wildcards, attempt):
    """Snakemake's attempt counter, for the job to know it is a retry."""
    return attempt


def halved_per_attempt(size):
    """Batch size for Snakemake's attempt counter: halved on every retry (after CUDA OOM)."""
    return lambda wildcards, attempt: max(1, size // 2 ** (attempt - 1))


# Prompts by role ("any" for those without one), each group embedded by its own rule, since a
# Snakemake rule's outputs cannot depend on its wildcards and a variant's job must list only the
# prompts its cells render (then a style prompt's change reruns no identity cell).
PROMPT_GROUPS = {
    group: [p for p in STUDY.prompts if prompt_group(p) == group]
    for group in dict.fromkeys(prompt_group(p) for p in STUDY.prompts)
}


def group_texts(group):
    """Prompt id -> text of the group's prompts that one variant renders, order-free: the
    embed_prompt jobs' rerun trigger."""

    def texts(w):
        prompts = GRID.variant_prompts(w.family, w.variant, group)
        return {p.id: p.text for p in sorted(prompts, key=lambda p: p.id)}

    return texts
