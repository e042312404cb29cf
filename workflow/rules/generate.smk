def generate_inputs(wildcards):
    """Models and precomputed embeddings one cell needs (never a text encoder)."""
    cell = GRID.cell(CELL_PATTERN.format(**wildcards))
    backbone, adapter = GRID.backbone(cell), GRID.adapter(cell)
    inputs = [marker_path(CONFIG, backbone["model"])]
    inputs += [
        PATHS.prompt_embedding(backbone["family"], p["id"], backbone["max_sequence_length"])
        for p in CONFIG["prompts"]
    ]
    if adapter["kind"] == "infusenet":
        inputs.append(marker_path(CONFIG, "infiniteyou"))
        inputs += [PATHS.identity_embedding(i["id"]) for i in CONFIG["identities"]]
    return inputs


rule generate:
    """All images of one cell: the pipeline loads once, finished images survive a crash."""
    input:
        generate_inputs,
    output:
        PATHS.manifest(CELL_PATTERN),
    params:
        # Reruns exactly the cells whose parameters or items changed.
        cell_hash=lambda w: GRID.cell_hash(GRID.cell(CELL_PATTERN.format(**w))),
    log:
        PATHS.log("generate", CELL_PATTERN.replace("/", "__")),
    benchmark:
        PATHS.benchmark("generate", CELL_PATTERN.replace("/", "__"))
    resources:
        gpu=GPU,
        mem_mb=64000 if CONFIG["weights"] != "tiny" else 3000,
        runtime=720,
    conda:
        "../../envs/fewstep.yaml"
    shell:
        "{FEWSTEP} generate --config {CONFIG_FILE}"
        " --cell {wildcards.backbone}/{wildcards.adapter}/{wildcards.steps} > {log} 2>&1"
