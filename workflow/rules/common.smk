from fewstep.models import marker_path


def generate_inputs(wildcards):
    """Models and precomputed embeddings one cell needs (never a text encoder)."""
    cell = GRID.cell(CELL_PATTERN.format(**wildcards))
    backbone, adapter = GRID.backbone(cell), GRID.adapter(cell)
    inputs = [marker_path(CONFIG, backbone["model"])]
    inputs += [
        PATHS.prompt_embedding(
            backbone["family"], p["id"], backbone["max_sequence_length"]
        )
        for p in CONFIG["prompts"]
    ]
    if adapter["kind"] == "infusenet":
        inputs.append(marker_path(CONFIG, "infiniteyou"))
        inputs += [PATHS.identity_embedding(i["id"]) for i in CONFIG["identities"]]
    return inputs
