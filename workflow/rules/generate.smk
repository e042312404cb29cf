rule generate:
    """All images of one cell: the pipeline loads once, finished images survive a crash."""
    input:
        generate_inputs,
    output:
        PATHS.manifest(CELL_PATTERN),
    log:
        PATHS.log("generate", CELL_PATTERN),
    benchmark:
        PATHS.benchmark("generate", CELL_PATTERN)
    retries: 2
    conda:
        "../../envs/fewstep.yaml"
    resources:
        gpu=GPU,
        mem_mb=64000 if CONFIG["weights"] != "tiny" else 3000,
        runtime=720,
        batch=halved_per_attempt(CONFIG["generation"]["batch_size"]),
        attempt=attempt_number,
    params:
        # Reruns exactly the cells whose parameters or items changed.
        cell_hash=lambda w: GRID.cell_hash(GRID.cell(CELL_PATTERN.format(**w))),
    shell:
        "python -m fewstep generate --batch-size {resources.batch}"
        " --attempt {resources.attempt}"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log:q} 2>&1"


rule trajectory:
    """Predicted clean image decoded and scored after every step, with adapter-strength probes."""
    input:
        generate_inputs,
        marker_path(CONFIG, "insightface"),
    output:
        PATHS.trajectory(CELL_PATTERN),
    log:
        PATHS.log("trajectory", CELL_PATTERN),
    benchmark:
        PATHS.benchmark("trajectory", CELL_PATTERN)
    conda:
        "../../envs/fewstep.yaml"
    threads: CPU_THREADS
    resources:
        gpu=GPU,
        mem_mb=64000 if CONFIG["weights"] != "tiny" else 3000,
        runtime=240,
    params:
        cell_hash=lambda w: GRID.cell_hash(GRID.cell(CELL_PATTERN.format(**w))),
        max_items=CONFIG["trajectory"]["max_items"],
        face=CONFIG["face"],
    shell:
        "python -m fewstep trajectory"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log:q} 2>&1"
