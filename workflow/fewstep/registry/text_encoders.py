"""Text-encoder configurations more than one family uses, as plain data (no torch)."""

from __future__ import annotations

#: OpenAI CLIP ViT-L/14's text tower (`CLIPTextModel`): FLUX's first encoder, SD1.5's encoder
#: and SDXL's first one, as their hub repos ship it.
CLIP_L_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
