"""Gradient-checkpointing modes (placeholder: only "none" until the MA-GC work lands)."""


def make_checkpointing(config, mode="none", layers_per_block=None, tokens_per_segment=None, budget_bytes=None):
    if mode == "none":
        return None
    raise NotImplementedError(f"checkpointing mode {mode!r} is not implemented yet")
