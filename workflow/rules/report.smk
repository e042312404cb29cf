rule aggregate:
    """Per cell and metric: mean, spread and a bootstrap interval."""
    input:
        [PATHS.scores(cell.id) for cell in GRID.cells],
    output:
        summary=PATHS.summary,
        per_image=PATHS.per_image,
    log:
        PATHS.log("aggregate"),
    conda:
        "../../envs/fewstep.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        report=CONFIG["report"],
    shell:
        "python -m fewstep aggregate --out {output.summary} > {log} 2>&1"


rule report:
    """Figures, image grids and reports/<sweep>/index.html."""
    input:
        summary=PATHS.summary,
    output:
        PATHS.report_index,
    log:
        PATHS.log("report"),
    conda:
        "../../envs/fewstep.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m fewstep report --summary {input.summary} > {log} 2>&1"
