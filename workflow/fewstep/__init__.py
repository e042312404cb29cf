"""fewstep: how few denoising steps identity-preserved generation needs."""
