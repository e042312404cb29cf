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
        "../../envs/score.yaml"
    threads: CPU_THREADS
    resources:
        gpu=GPU,
        mem_mb=16000 if CONFIG["weights"] != "tiny" else 2000,
        runtime=120,
        batch=halved_per_attempt(CONFIG["scoring"]["batch_size"]),
        attempt=attempt_number,
    params:
        # Rescore when the metrics, the face pack, the anchor or a reference picture change
        # (a cell without a face adapter does not regenerate when a picture changes).
        scoring=CONFIG["scoring"],
        pictures=GRID.pictures,
        face=CONFIG["face"],
        anchor=CONFIG.get("anchor"),
    shell:
        "python -m fewstep score --batch-size {resources.batch}"
        " --attempt {resources.attempt}"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log:q} 2>&1"
