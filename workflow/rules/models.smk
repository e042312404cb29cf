rule prepare_model:
    """Download (real), build (tiny) or configure (random) one registry model."""
    output:
        marker_path(STUDY, "{model}"),
    log:
        PATHS.log("prepare_model", "{model}"),
    conda:
        "../../envs/models.yaml"
    resources:
        mem_mb=8000,
        runtime=240,
        attempt=attempt_number,
    params:
        # a changed hub revision (config revisions) fetches the model again
        revision=lambda w: model_revision(STUDY, w.model),
    shell:
        "python -m fewstep prepare-model --model {wildcards.model}"
        " --attempt {resources.attempt} > {log:q} 2>&1"
