# Prompt id -> text, order-free: the prompt embedding jobs' rerun trigger.
PROMPT_TEXTS = {p.id: p.text for p in sorted(STUDY.prompts, key=lambda p: p.id)}


rule embed_prompt:
    """CLIP + T5 embeddings of every prompt at one sequence length, the text encoders loaded
    once (dev and schnell share them)."""
    input:
        lambda w: marker_path(STUDY, GRID.text_encoder_backbone(w.family)),
    output:
        [PATHS.prompt_embedding("{family}", p.id, "{length}") for p in STUDY.prompts],
    log:
        PATHS.log("embed_prompt", "{family}/L{length}"),
    benchmark:
        PATHS.benchmark("embed_prompt", "{family}/L{length}")
    conda:
        "../../envs/generate.yaml"
    threads: CPU_THREADS
    resources:
        gpu=GPU,
        mem_mb=40000 if STUDY.weights != "tiny" else 2000,
        runtime=60,
        attempt=attempt_number,
    params:
        # Re-embed when a prompt's text changes (the encoders are the input marker).
        texts=PROMPT_TEXTS,
    shell:
        "python -m fewstep embed-prompts --family {wildcards.family}"
        " --length {wildcards.length} --attempt {resources.attempt} > {log:q} 2>&1"


rule embed_identity:
    """Face detection, alignment and the IR-SE50 ArcFace embedding of one identity."""
    input:
        marker_path(STUDY, "insightface"),
        marker_path(STUDY, "arcface-irse50"),
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
        # Re-embed when the picture's content (or builtin name) or the face choice changes.
        picture=lambda w: GRID.pictures[w.identity],
        policy=STUDY.face.policy,
    shell:
        "python -m fewstep embed-identities --identity {wildcards.identity}"
        " --attempt {resources.attempt} > {log:q} 2>&1"


rule embed_sd_prompt:
    """SD text embeddings of every prompt with one CFG negative prompt (named by its label),
    the text encoders loaded once."""
    input:
        lambda w: marker_path(STUDY, GRID.text_encoder_backbone(w.family)),
    output:
        [
            PATHS.negative_prompt_embedding("{family}", p.id, "{negative}")
            for p in STUDY.prompts
        ],
    log:
        PATHS.log("embed_prompt", "{family}/{negative}"),
    benchmark:
        PATHS.benchmark("embed_sd_prompt", "{family}/{negative}")
    conda:
        "../../envs/generate.yaml"
    threads: CPU_THREADS
    resources:
        gpu=GPU,
        mem_mb=16000 if STUDY.weights != "tiny" else 2000,
        runtime=30,
        attempt=attempt_number,
    params:
        # Re-embed when a prompt's text or the negative prompt changes.
        texts=PROMPT_TEXTS,
        negative=lambda w: GRID.prompt_variants(w.family)[w.negative].get(
            "negative_prompt"
        )
        or "",
    shell:
        "python -m fewstep embed-prompts --family {wildcards.family}"
        " --negative {wildcards.negative} --attempt {resources.attempt} > {log:q} 2>&1"


rule embed_reference:
    """IP-Adapter image embeddings of one reference through one adapter file's image encoder."""
    input:
        lambda w: marker_path(STUDY, w.family),
        marker_path(STUDY, "ip-adapter"),
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
