"""Real pretrained checkpoints (BERT family, GPT-2) run in plain numpy."""
