"""The plan: head sets + settings + a model's sites compiled once into per-site, per-row strengths, branches and windows."""
