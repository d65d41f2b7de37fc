"""MLX models: Hugging Face repos with MLX's conventions.

A bare name means `mlx-community/<name>` (where the converted models live), and a repo only
passes for an MLX model when it has a `config.json` and `*.safetensors` weights, which is what
`mlx_lm.load()` reads. Everything else (cache layout, tokens, errors) is the Hugging Face
provider's.
"""
from __future__ import annotations

from pathlib import Path

from .._errors import ModelPullError
from ._hf_cache import RepoFile
from .huggingface import HubTarget, HuggingFaceProvider

MLX_COMMUNITY = "mlx-community"


class NotAnMlxModel(ModelPullError):
    code = "not_mlx_model"


class MlxProvider(HuggingFaceProvider):
    """An MLX model from the Hugging Face Hub (`mlx:name` or `mlx:org/name`)."""

    name = "mlx"

    def repo_id(self, model: str) -> str:
        return model if "/" in model else f"{MLX_COMMUNITY}/{model}"

    def check_listing(self, target: HubTarget, files: list[RepoFile]) -> None:
        """Before any byte moves: the repo has a config.json and safetensors weights."""
        paths = [f.path for f in files]
        lacks = [what for what, found in (
            ("no config.json", "config.json" in paths),
            ("no *.safetensors weights", any(p.endswith(".safetensors") for p in paths)),
        ) if not found]
        if lacks:
            raise NotAnMlxModel(
                f"'{target.repo_id}' does not look like an MLX model: the repo has {' and '.join(lacks)}. "
                f"MLX models have config.json and *.safetensors weights (converted ones are under "
                f"{target.endpoint}/{MLX_COMMUNITY}); for other formats use the huggingface provider."
            )

    def check_snapshot(self, target: HubTarget, folder: Path, files: list[RepoFile]) -> None:
        """After the download: every config.json / *.safetensors asked for is a file in the snapshot."""
        for file in files:
            if file.path == "config.json" or file.path.endswith(".safetensors"):
                if not folder.joinpath(*file.path.split("/")).is_file():
                    raise NotAnMlxModel(
                        f"the snapshot of '{target.repo_id}' at {folder} lacks {file.path}: "
                        "mlx_lm cannot load it; download it again"
                    )
