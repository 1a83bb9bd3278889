"""Training: the loop shared by fine-tuning and MLM pretraining, ``Trainer``, ``Pretrainer``, callbacks,
checkpoints, the run folder, optimisers, losses, loggers and speed-ups."""
