"""Stage 1: self-supervised AU region and relation pretraining."""
