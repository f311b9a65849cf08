"""Local folders or Hugging Face hub names: `resolve_path(path)`.

The only network access in the package, and only when a hub name is given.
"""
from __future__ import annotations

import logging
import os
import pathlib

log = logging.getLogger(__name__)


def resolve_path(path: str | os.PathLike) -> pathlib.Path:
    """A local folder as is; otherwise downloads the hub repo `path` (needs network)."""
    local = pathlib.Path(path).expanduser()
    if local.exists():
        return local
    from huggingface_hub import snapshot_download  # only for hub names
    log.info("%s is not a local folder; downloading it from the Hugging Face hub", path)
    return pathlib.Path(snapshot_download(
        repo_id=str(path),
        allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]))
