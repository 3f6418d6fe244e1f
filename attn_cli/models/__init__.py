"""Real pretrained checkpoints run in plain numpy: one file per architecture family (see
registry.py), with the weights, checkpoint discovery and shared layers they use."""
