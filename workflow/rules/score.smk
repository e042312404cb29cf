rule score:
    """Every metric for every image of the cells of one generation job, the networks loaded
    once (after the anchor cell's job, for LPIPS to it); rescores only the cells that changed.
    """
    input:
        score_inputs,
    output:
        PATHS.score_record(JOB_PATTERN),
    log:
        PATHS.log("score", JOB_PATTERN),
    benchmark:
        PATHS.benchmark("score", JOB_PATTERN)
    retries: 2
    conda:
        "../../envs/score.yaml"
    threads: CPU_THREADS
    resources:
        gpu=GPU,
        mem_mb=16000 if STUDY.weights != "tiny" else 2000,
        runtime=lambda w: 120 * len(GRID.job(JOB_PATTERN.format(**w))),  # minutes: 2 h per cell
        batch=halved_per_attempt(STUDY.scoring.batch_size),
        attempt=attempt_number,
    params:
        # Rescore exactly when a cell's metrics and their settings, its reference pictures, the
        # face choice (identity cells) or its anchor change (a cell without an adapter does not
        # regenerate when a picture changes); one order-free hash over the job's cells.
        score_hash=lambda w: GRID.job_score_hash(JOB_PATTERN.format(**w)),
    shell:
        "python -m fewstep score --batch-size {resources.batch}"
        " --attempt {resources.attempt}"
        " --job {wildcards.backbone}/{wildcards.adapter} > {log:q} 2>&1"
