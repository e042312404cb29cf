# One embed_prompt rule per prompt group (`PROMPT_GROUPS`, in common.smk).
for group, prompts in PROMPT_GROUPS.items():

    rule:
        """Embeddings of a prompt group as one prompt variant of one family (`Family.prompt_variants`:
        FLUX's T5 sequence length, an SD family's CFG negative prompt), its text encoders loaded
        once (FLUX dev and schnell share them). Named embed_prompt for prompts without a role,
        embed_prompt_<role> for a role's."""
        name:
            prompt_rule(group)
        input:
            lambda w: marker_path(STUDY, GRID.text_encoder_backbone(w.family)),
        output:
            [
                PATHS.prompt_variant_embedding("{family}", p.id, "{variant}")
                for p in prompts
            ],
        log:
            PATHS.log(prompt_rule(group), "{family}/{variant}"),
        benchmark:
            PATHS.benchmark(prompt_rule(group), "{family}/{variant}")
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
            texts=group_texts(group),
            settings=lambda w: GRID.prompt_settings(w.family, w.variant),
            group=group,
        shell:
            "python -m fewstep embed-prompts --family {wildcards.family} --variant {wildcards.variant}"
            " --role {params.group} --attempt {resources.attempt} > {log:q} 2>&1"


rule embed_identity:
    """The face embeddings of one identity that the sweep's adapters read, through each family's
    `identity_encoder` (FLUX: face detection, alignment, the IR-SE50 ArcFace)."""
    input:
        [marker_path(STUDY, name) for name in GRID.identity_models()],
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
        # Re-embed when the picture's content (or builtin name), the face choice or the face
        # models the families' adapters read (FaceID cells add buffalo_l's w600k) change.
        picture=lambda w: GRID.pictures[w.identity],
        policy=STUDY.face.policy,
        models=GRID.identity_models(),
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
