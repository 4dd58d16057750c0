"""The language models: Mamba-2 (config, state, ssd scan, mixer, LM) and the Transformer baseline."""
