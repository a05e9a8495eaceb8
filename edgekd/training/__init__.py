"""Online distillation: methods (one unit each), the trainer, checkpoints."""
