"""FLUX.2 [klein] 4B's published configs, as plain data the loaders, the random-weight writer and
the tiny builders start from (black-forest-labs/FLUX.2-klein-4B, diffusers layout).

4B rather than 9B: it is Apache-2.0 and ungated (the 9B is non-commercial and gated), its
Qwen3-4B text encoder and 4B transformer fit the same cards as FLUX.1, and it is the variant
Black Forest Labs recommends for real-time use. Both are step-distilled to 4 steps and take no
guidance (`model_index.json`: ``is_distilled: true``).
"""

#: the model card's sampler: 4 steps, guidance_scale 1.0 (ignored: the model is distilled)
RECOMMENDED_STEPS = 4
#: Qwen3 hidden states at these layers, stacked into the prompt embedding (the pipeline's default)
TEXT_ENCODER_OUT_LAYERS = (9, 18, 27)
#: tokens of the chat-formatted prompt (the pipeline's default and its tokenizer_max_length)
MAX_SEQUENCE_LENGTH = 512
#: reference images above this many pixels are resized to it before encoding (the pipeline's rule)
REFERENCE_MAX_AREA = 1024 * 1024

TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,
    num_layers=5,
    num_single_layers=20,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=7680,  # 3 Qwen3 layers x hidden 2560
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=[32, 32, 32, 32],
    rope_theta=2000,
    eps=1e-6,
    guidance_embeds=False,
)
#: AutoencoderKLFlux2's defaults are FLUX.2's VAE (32 latent channels, batch-norm statistics)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=32,
    norm_num_groups=32,
    sample_size=1024,
    use_quant_conv=True,
    use_post_quant_conv=True,
    batch_norm_eps=1e-4,
    patch_size=[2, 2],
)
#: dynamic shifting: the pipeline passes `mu` from the image's token count and the step count
SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}
#: Qwen3-4B as klein's ``text_encoder`` ships it (Qwen3ForCausalLM)
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
MODEL_INDEX = {
    "_class_name": "Flux2KleinPipeline",
    "is_distilled": True,
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3ForCausalLM"],
    "tokenizer": ["transformers", "Qwen2TokenizerFast"],
    "transformer": ["diffusers", "Flux2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLFlux2"],
}
