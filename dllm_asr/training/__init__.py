"""Training: objectives, recipes, schedules, the trainer and its distributed launch."""
