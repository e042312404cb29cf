rule score:
    """Every metric for every image of one cell (after the anchor cell, for LPIPS to it)."""
    input:
        score_inputs,
    output:
        PATHS.scores(CELL_PATTERN),
    log:
        PATHS.log("score", CELL_PATTERN),
    benchmark:
        PATHS.benchmark("score", CELL_PATTERN)
    retries: 2
    conda:
        "../../envs/fewstep.yaml"
    resources:
        gpu=GPU,
        mem_mb=16000 if CONFIG["weights"] != "tiny" else 2000,
        runtime=120,
        batch=halved_per_attempt(CONFIG["scoring"]["batch_size"]),
    params:
        # Rescore when the metrics, the face pack or the anchor change.
        scoring=CONFIG["scoring"],
        face=CONFIG["face"],
        anchor=CONFIG.get("anchor"),
    shell:
        "python -m fewstep score --batch-size {resources.batch}"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log} 2>&1"
