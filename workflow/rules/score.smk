rule score:
    """Every metric for every image of one cell."""
    input:
        manifest=PATHS.manifest(CELL_PATTERN),
        models=marker_path(CONFIG, "insightface"),
    output:
        PATHS.scores(CELL_PATTERN),
    params:
        metrics=CONFIG["scoring"],
    log:
        PATHS.log("score", CELL_PATTERN.replace("/", "__")),
    benchmark:
        PATHS.benchmark("score", CELL_PATTERN.replace("/", "__"))
    resources:
        mem_mb=8000 if CONFIG["weights"] != "tiny" else 2000,
        runtime=120,
    conda:
        "../../envs/fewstep.yaml"
    shell:
        "{FEWSTEP} score --config {CONFIG_FILE}"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log} 2>&1"
