"""fewstep: how few denoising steps identity-preserved generation needs."""

__version__ = "0.1.0"
