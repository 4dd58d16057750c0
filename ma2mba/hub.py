"""Find a model folder: a local path, the packaged default, or a Hugging Face Hub repo id.

A model folder is a Hub-style repo: config.json, weights (model.safetensors, or mamba_ssm's
pytorch_model.bin), and for video models tokenizer.json and a README.md model card.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelNotFoundError(RuntimeError):
    """A model name or path that cannot be loaded; the message says what to do."""


class ModelFileError(ModelNotFoundError):
    """A model folder whose files are there but wrong: unreadable, truncated, or not the model its config describes."""


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_dir(
    name_or_path: str | os.PathLike, files=("config.json", *WEIGHT_FILES, "tokenizer.json", "README.md")
) -> Path:
    """Return a local folder holding the model: the path itself, or a Hub snapshot of the repo.

    Only `files` are downloaded from the Hub (missing optional ones are fine).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but has no config.json, so it is not a model folder.")
        return path
    name = str(name_or_path)
    if path.exists() or not looks_like_repo_id(name):
        raise ModelNotFoundError(
            f"No model folder at {name!r}. Give a folder with config.json and model weights, "
            "or a Hugging Face repo id such as 'state-spaces/mamba2-130m'."
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise ModelNotFoundError("huggingface_hub is not installed, so Hub repo ids cannot be loaded.") from e
    try:
        local = snapshot_download(name, allow_patterns=list(files))
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(f"The Hub has no repo {name!r} (or it is private).") from e
    except LocalEntryNotFoundError as e:
        raise ModelNotFoundError(
            f"Cannot reach the Hugging Face Hub to download {name!r}, and it is not in the local cache. "
            "Check the network, or pass a local folder instead."
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise ModelNotFoundError(f"Downloading {name!r} from the Hub failed: {e}") from e
    local = Path(local)
    if not (local / "config.json").is_file():
        raise ModelNotFoundError(f"The Hub repo {name!r} has no config.json, so it is not a model folder.")
    return local


def find_weights(folder: Path) -> Path:
    for f in WEIGHT_FILES:
        if (folder / f).is_file():
            return folder / f
    raise ModelNotFoundError(f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)}.")


def read_weights(path: Path) -> dict:
    """Read weights without unpickling arbitrary objects; a damaged file raises ModelFileError naming it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise several types for a damaged file
        raise ModelFileError(
            f"{path} cannot be read as weights ({type(e).__name__}: {e}). "
            "The file is damaged or incomplete: download or export it again."
        ) from e


def load_checked(module, state: dict, path: Path) -> None:
    """module.load_state_dict(state), with every missing key, unexpected key and shape mismatch named."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    problems = [
        f"{len(v)} {what}: {', '.join(v[:8])}{' …' if len(v) > 8 else ''}"
        for what, v in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", shapes))
        if v
    ]
    if problems:
        raise ModelFileError(f"{path} does not match the model its config.json describes: " + "; ".join(problems) + ".")
    module.load_state_dict(state)
