"""Training pieces used by train/pretrain.py: optimiser, schedule, checkpointing, metrics, distributed setup."""
