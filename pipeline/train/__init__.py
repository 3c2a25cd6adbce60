"""Ray Train + DeepSpeed pretraining: config builder, schedules, the worker loop, the trainer."""
