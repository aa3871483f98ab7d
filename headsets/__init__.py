"""Head-set presets shipped with headhunter: `index.json` maps names to files; see `headhunter presets`."""
