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
        # Rescore exactly when the cell's metrics and their settings, its reference pictures, the
        # face choice (identity cells) or its anchor change (a cell without an adapter does not
        # regenerate when a picture changes); one order-free hash, as the cells' own.
        score_hash=lambda w: GRID.score_hash(GRID.cell(CELL_PATTERN.format(**w))),
    shell:
        "python -m fewstep score --batch-size {resources.batch}"
        " --attempt {resources.attempt}"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log:q} 2>&1"
