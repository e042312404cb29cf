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
    conda:
        "../../envs/fewstep.yaml"
    resources:
        gpu=GPU,
        mem_mb=64000 if CONFIG["weights"] != "tiny" else 3000,
        runtime=720,
    params:
        # Reruns exactly the cells whose parameters or items changed.
        cell_hash=lambda w: GRID.cell_hash(GRID.cell(CELL_PATTERN.format(**w))),
    shell:
        "python -m fewstep generate"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log} 2>&1"
