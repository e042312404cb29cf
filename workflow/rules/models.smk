from fewstep.models import marker_path


rule prepare_model:
    """Download (real), build (tiny) or configure (random) one registry model."""
    output:
        marker_path(CONFIG, "{model}"),
    log:
        PATHS.log("prepare_model", "{model}"),
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/fewstep.yaml"
    shell:
        "{FEWSTEP} prepare-model --config {CONFIG_FILE} --model {wildcards.model} > {log} 2>&1"
