rule aggregate:
    """Per cell and metric: mean, spread and a bootstrap interval."""
    input:
        [PATHS.scores(cell.id) for cell in GRID.cells],
    output:
        summary=PATHS.summary,
        per_image=PATHS.per_image,
    params:
        report=CONFIG["report"],
    log:
        PATHS.log("aggregate"),
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/fewstep.yaml"
    shell:
        "{FEWSTEP} aggregate --config {CONFIG_FILE} --out {output.summary} > {log} 2>&1"


rule report:
    """Figures, image grids and reports/<sweep>/index.html."""
    input:
        summary=PATHS.summary,
    output:
        PATHS.report_index,
    log:
        PATHS.log("report"),
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/fewstep.yaml"
    shell:
        "{FEWSTEP} report --config {CONFIG_FILE} --summary {input.summary} > {log} 2>&1"
