"""Training: recipes, schedules, optimizers and the progressive trainer (import the submodules)."""
