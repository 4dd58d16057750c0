"""Training (Trainer over a list of Stage values) and the held-out evaluation."""
