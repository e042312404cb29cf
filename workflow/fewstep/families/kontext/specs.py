"""FLUX.1 Kontext [dev]'s published configs, plain data (black-forest-labs/FLUX.1-Kontext-dev,
diffusers layout): the loaders, the random-weight writer and the tiny builder start from them.

Kontext is FLUX.1 [dev] fine-tuned for editing: the transformer, VAE, text encoders (CLIP-L,
T5-XXL) and scheduler have FLUX.1-dev's shapes and settings, which
``tests/test_kontext.py`` holds against the FLUX family's specs (a family never imports
another, so the values are written out here).
"""

KONTEXT_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
KONTEXT_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=[16, 56, 56],
)
KONTEXT_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
)
KONTEXT_MODEL_INDEX = {
    "_class_name": "FluxKontextPipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
#: how a study prompt ("The person as an astronaut ...") is phrased as an edit of the identity photo
PROMPT_TEMPLATE = "Make a new photo of this person, keeping their face and identity: {prompt}"
#: the identity embedding file's tensor holding the photo Kontext edits (uint8 [H, W, 3] RGB)
PHOTO = "kontext_photo"
