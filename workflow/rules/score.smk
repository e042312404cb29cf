rule score:
    """Every metric for every image of one cell."""
    input:
        manifest=PATHS.manifest(CELL_PATTERN),
        models=marker_path(CONFIG, "insightface"),
    output:
        PATHS.scores(CELL_PATTERN),
    log:
        PATHS.log("score", CELL_PATTERN),
    benchmark:
        PATHS.benchmark("score", CELL_PATTERN)
    conda:
        "../../envs/fewstep.yaml"
    resources:
        mem_mb=8000 if CONFIG["weights"] != "tiny" else 2000,
        runtime=120,
    params:
        metrics=CONFIG["scoring"],
    shell:
        "python -m fewstep score"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log} 2>&1"
