"""The jobs the rules run (through `fewstep.cli`): precompute, generate, trajectory, score."""
