"""Find a model folder: a local path, the packaged default, or a Hugging Face Hub repo id.

A model folder is a Hub-style repo: config.json, weights (model.safetensors, or mamba_ssm's
pytorch_model.bin), and for video models tokenizer.json and a README.md model card.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PACKAGED_MODEL_DIR = PACKAGE_ROOT / "assets" / "ma2mba-shapes"

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelNotFoundError(RuntimeError):
    """A model name or path that cannot be loaded; the message says what to do."""


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_dir(name_or_path: str | os.PathLike, files=("config.json", *WEIGHT_FILES, "tokenizer.json", "README.md")) -> Path:
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


def load_state_dict(path: Path) -> dict:
    """Read weights without unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
