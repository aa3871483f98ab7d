"""The file format: sites, settings and metadata types, head sets and their files, presets, model cards, and the Hub transport the head set pushes and pulls through."""
