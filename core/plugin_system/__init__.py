"""The plugin system: pluggy hook specifications and the registry that answers "perturbation X", "the adapter for this model", "the sites of base model Y". Imports nothing above the root."""
