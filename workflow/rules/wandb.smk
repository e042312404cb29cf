rule wandb_aggregate:
    """One W&B run (job_type aggregate): every aggregate table, report figure and the report page."""
    input:
        summary=PATHS.summary,
        report=PATHS.report_index,
    output:
        PATHS.wandb_aggregate_record,
    log:
        PATHS.log("wandb_aggregate"),
    conda:
        "../../envs/wandb.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
        attempt=attempt_number,
    params:
        # switching tracking on (or to another project) relogs the sweep, never regenerates a cell
        wandb=STUDY.wandb.to_dict(),
    shell:
        "python -m fewstep wandb-aggregate --out {output:q}"
        " --attempt {resources.attempt} > {log:q} 2>&1"


rule wandb_sync:
    """Upload the sweep's offline W&B runs: `snakemake wandb_sync` (not in `all`; needs an API key)."""
    log:
        PATHS.log("wandb_sync"),
    localrule: True
    conda:
        "../../envs/wandb.yaml"
    resources:
        mem_mb=2000,
        runtime=120,
    shell:
        "python -m fewstep wandb-sync > {log:q} 2>&1"


rule wandb_workspace:
    """Save the sweep's W&B workspace: `snakemake wandb_workspace` (not in `all`; needs an API key)."""
    log:
        PATHS.log("wandb_workspace"),
    localrule: True
    conda:
        "../../envs/wandb.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m fewstep wandb-workspace > {log:q} 2>&1"
