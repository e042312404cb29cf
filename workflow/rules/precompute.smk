rule embed_prompts:
    """CLIP + T5 prompt embeddings, once per sweep (dev and schnell share them)."""
    input:
        [marker_path(CONFIG, GRID.text_encoder_backbone(f)) for f in GRID.families],
    output:
        [
            PATHS.prompt_embedding(family, prompt["id"], length)
            for family in GRID.families
            for prompt in CONFIG["prompts"]
            for length in GRID.sequence_lengths(family)
        ],
    log:
        PATHS.log("embed_prompts"),
    conda:
        "../../envs/fewstep.yaml"
    resources:
        gpu=GPU,
        mem_mb=40000 if CONFIG["weights"] != "tiny" else 2000,
        runtime=60,
    shell:
        "python -m fewstep embed-prompts > {log} 2>&1"


rule embed_identities:
    """Face detection, alignment and the IR-SE50 ArcFace embedding of each identity."""
    input:
        marker_path(CONFIG, "insightface"),
        marker_path(CONFIG, "arcface-irse50"),
        # a replaced picture re-embeds (builtin: pictures come with their package)
        [
            i["image"]
            for i in CONFIG["identities"]
            if not i["image"].startswith("builtin:")
        ],
    output:
        [PATHS.identity_embedding(i["id"]) for i in CONFIG["identities"]],
    log:
        PATHS.log("embed_identities"),
    conda:
        "../../envs/fewstep.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m fewstep embed-identities > {log} 2>&1"
