"""The contracts plugins implement: model adapters (sites, token layout), perturbations (targets) and objectives (scores)."""
