"""Model registry: `ModelSpec`s with their recipes, `prepare`, the hub/URL transport and loading."""
