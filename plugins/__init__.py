"""Built-in plugins of headhunter, registered through the same hooks a third-party plugin uses."""
