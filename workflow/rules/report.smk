from fewstep.analysis.outputs import SECTIONS, TABLES


# `snakemake --report report.html` describes the workflow with this page and
# shows every figure below in its category.
report: "../report/workflow.rst"


rule aggregate:
    """Every table: per cell and metric with intervals, effective regime, Pareto, the study's comparison."""
    input:
        scores=[PATHS.score_record(job) for job in GRID.jobs],
        trajectories=[PATHS.trajectory(cell.id) for cell in GRID.trajectory_cells],
    output:
        summary=PATHS.summary,
        per_image=PATHS.per_image,
        tables=[PATHS.table(name) for name in TABLES if name != "summary"],
    log:
        PATHS.log("aggregate"),
    conda:
        "../../envs/report.yaml"
    threads: CPU_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        attempt=attempt_number,
    params:
        report=STUDY.report.to_dict(),
        anchor=STUDY.anchor,
        comparison=STUDY.comparison and STUDY.comparison.to_dict(),
    shell:
        "python -m fewstep aggregate --out {output.summary:q}"
        " --attempt {resources.attempt} > {log:q} 2>&1"


rule report:
    """Figures (PNG + SVG), image grids, CSV tables and the self-contained reports/<sweep>/index.html."""
    input:
        summary=PATHS.summary,
        per_image=PATHS.per_image,
        tables=[PATHS.table(name) for name in TABLES if name != "summary"],
        generated=[PATHS.generation_record(job) for job in GRID.jobs],
        trajectories=[PATHS.trajectory(cell.id) for cell in GRID.trajectory_cells],
    output:
        page=report(
            PATHS.report_index,
            category="Report page",
            caption="../report/page.rst",
        ),
        figures=[
            report(
                directory(PATHS.report_figures(section)),
                patterns=["{name}.png"],
                category=section.capitalize(),
                labels={"figure": "{name}"},
                caption=f"../report/{section}.rst",
            )
            for section in SECTIONS
        ],
        tables=report(
            directory(PATHS.report_tables),
            patterns=["{name}.csv"],
            category="Tables",
            labels={"table": "{name}"},
            caption="../report/tables.rst",
        ),
    log:
        PATHS.log("report"),
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
        attempt=attempt_number,
    params:
        report=STUDY.report.to_dict(),
    shell:
        "python -m fewstep report --summary {input.summary:q} --out {output.page:q}"
        " --attempt {resources.attempt} > {log:q} 2>&1"
