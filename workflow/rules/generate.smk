rule generate:
    """Every step count of one backbone x adapter x acceleration: the pipeline loads (and compiles)
    once; each cell keeps its own images, journal and manifest; finished images survive a crash.
    """
    input:
        generate_inputs,
    output:
        PATHS.generation_record(JOB_PATTERN),
    log:
        PATHS.log("generate", JOB_PATTERN),
    benchmark:
        PATHS.benchmark("generate", JOB_PATTERN)
    retries: 2
    conda:
        "../../envs/generate.yaml"
    resources:
        gpu=GPU,
        mem_mb=64000 if STUDY.weights != "tiny" else 3000,
        runtime=720,
        batch=halved_per_attempt(STUDY.generation.batch_size),
        attempt=attempt_number,
    params:
        # Reruns the jobs one of whose cells changed (resuming: unchanged cells keep their images).
        job_hash=lambda w: GRID.job_hash(JOB_PATTERN.format(**w)),
    shell:
        "python -m fewstep generate --batch-size {resources.batch}"
        " --attempt {resources.attempt}"
        " --job {wildcards.backbone}/{wildcards.adapter} > {log:q} 2>&1"


rule trajectory:
    """Predicted clean image decoded and scored after every step (the cell's metrics that compare
    with the adapter's picture), with adapter-strength probes."""
    input:
        generate_inputs,
        trajectory_score_inputs,
    output:
        PATHS.trajectory(CELL_PATTERN),
    log:
        PATHS.log("trajectory", CELL_PATTERN),
    benchmark:
        PATHS.benchmark("trajectory", CELL_PATTERN)
    conda:
        "../../envs/generate.yaml"
    threads: CPU_THREADS
    resources:
        gpu=GPU,
        mem_mb=64000 if STUDY.weights != "tiny" else 3000,
        runtime=240,
        attempt=attempt_number,
    params:
        cell_hash=lambda w: GRID.cell_hash(GRID.cell(CELL_PATTERN.format(**w))),
        max_items=STUDY.trajectory.max_items,
        metrics=lambda w: GRID.trajectory_metrics(GRID.cell(CELL_PATTERN.format(**w))),
        face=STUDY.face.to_dict(),
    shell:
        "python -m fewstep trajectory"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps}"
        " --attempt {resources.attempt} > {log:q} 2>&1"
