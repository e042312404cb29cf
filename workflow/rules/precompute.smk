# Prompt id -> text, order-free: the prompt embedding jobs' rerun trigger.
PROMPT_TEXTS = {p.id: p.text for p in sorted(STUDY.prompts, key=lambda p: p.id)}


rule embed_prompt:
    """Embeddings of every prompt as one prompt variant of one family (`Family.prompt_variants`:
    FLUX's T5 sequence length, an SD family's CFG negative prompt), its text encoders loaded once
    (FLUX dev and schnell share them)."""
    input:
        lambda w: marker_path(STUDY, GRID.text_encoder_backbone(w.family)),
    output:
        [
            PATHS.prompt_variant_embedding("{family}", p.id, "{variant}")
            for p in STUDY.prompts
        ],
    log:
        PATHS.log("embed_prompt", "{family}/{variant}"),
    benchmark:
        PATHS.benchmark("embed_prompt", "{family}/{variant}")
    conda:
        "../../envs/generate.yaml"
    threads: CPU_THREADS
    resources:
        gpu=GPU,
        mem_mb=lambda w: (
            GRID.known_families[w.family].prompt_job_mem_mb
            if STUDY.weights != "tiny"
            else 2000
        ),
        runtime=60,
        attempt=attempt_number,
    params:
        # Re-embed when a prompt's text or the variant's settings (SD: the negative prompt) change.
        texts=PROMPT_TEXTS,
        settings=lambda w: GRID.prompt_settings(w.family, w.variant),
    shell:
        "python -m fewstep embed-prompts --family {wildcards.family}"
        " --variant {wildcards.variant} --attempt {resources.attempt} > {log:q} 2>&1"


rule embed_identity:
    """Face detection, alignment and the embeddings of one identity: each recogniser the identity
    cells read (InfuseNet's IR-SE50 ArcFace, IP-Adapter FaceID's buffalo_l w600k_r50).
    """
    input:
        marker_path(STUDY, "insightface"),
        [marker_path(STUDY, name) for name in GRID.identity_encoders],
        identity_picture,
    output:
        PATHS.identity_embedding("{identity}"),
    log:
        PATHS.log("embed_identity", "{identity}"),
    conda:
        "../../envs/generate.yaml"
    threads: CPU_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        attempt=attempt_number,
    params:
        # Re-embed when the picture's content (or builtin name), the face choice or the
        # recognisers the identity cells read change.
        picture=lambda w: GRID.pictures[w.identity],
        policy=STUDY.face.policy,
        encoders=GRID.identity_encoders,
    shell:
        "python -m fewstep embed-identities --identity {wildcards.identity}"
        " --attempt {resources.attempt} > {log:q} 2>&1"


rule embed_reference:
    """Image embeddings of one reference through the image encoder of one adapter file
    (`Family.reference_file`: an SD family's IP-Adapter plain or Plus)."""
    input:
        lambda w: [
            marker_path(STUDY, name)
            for name in GRID.reference_models(w.family, w.file)
        ],
        reference_picture,
    output:
        PATHS.reference_embedding("{family}", "{file}", "{reference}"),
    log:
        PATHS.log("embed_reference", "{family}/{file}/{reference}"),
    benchmark:
        PATHS.benchmark("embed_reference", "{family}/{file}/{reference}")
    conda:
        "../../envs/generate.yaml"
    threads: CPU_THREADS
    resources:
        gpu=GPU,
        mem_mb=16000 if STUDY.weights != "tiny" else 2000,
        runtime=30,
        attempt=attempt_number,
    params:
        # Re-embed when the picture's content (or builtin name) changes.
        picture=lambda w: GRID.reference_pictures[w.reference],
    shell:
        "python -m fewstep embed-references --family {wildcards.family} --file {wildcards.file}"
        " --reference {wildcards.reference} --attempt {resources.attempt} > {log:q} 2>&1"
