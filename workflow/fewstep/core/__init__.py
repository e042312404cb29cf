"""Lowest layer: config, errors, atomic io, paths, provenance, images, job environment, GPU claims."""
