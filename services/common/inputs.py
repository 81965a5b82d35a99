"""What the routes do to inputs and outputs around the model, kept apart from HTTP: prompts, token-id inputs,
`dimensions` (Matryoshka truncation)."""

from __future__ import annotations

import numpy as np

from .embedder import Embedder, normalize_rows
from .errors import ApiError, ErrorType


def prompt_for(embedder: Embedder, prompt_name: str | None, default_prompt_name: str | None) -> str:
    """The text put before every input: the named prompt, else the default one, else none (400 for a name the
    model does not define)."""
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is None:
        return ""
    if name not in embedder.prompts:
        have = ", ".join(sorted(embedder.prompts)) or "none: its sentence-transformers config defines no prompts"
        raise ApiError(
            ErrorType.INVALID_PARAMETER,
            f"prompt_name {name!r} is not one of this model's prompts ({have})",
            param="prompt_name",
        )
    return embedder.prompts[name]


def is_token_ids(value) -> bool:
    """`[int, ...]` or `[[int, ...], ...]` (the schema has already checked that the types are uniform)."""
    return isinstance(value, list) and bool(value) and (isinstance(value[0], int) or isinstance(value[0], list))


def token_id_rows(value: list) -> list[list[int]]:
    return [value] if isinstance(value[0], int) else value


def check_model_ids(embedder: Embedder, rows: list[list[int]]) -> None:
    """Ids of the served model's own vocabulary (TOKEN_IDS=model): each one known to its tokenizer."""
    size = embedder.vocab_size
    for i, row in enumerate(rows):
        bad = next((t for t in row if t < 0 or (size is not None and t >= size)), None)
        if bad is not None:
            limit = f"0 .. {size - 1}" if size is not None else "non-negative"
            raise ApiError(
                ErrorType.INVALID_PARAMETER,
                f"input {i}: {bad} is not a token id of the served model ({limit})",
                param="input",
            )


def check_dimensions(dimensions: int | None, model_dimension: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= model_dimension:
        raise ApiError(
            ErrorType.INVALID_PARAMETER,
            f"dimensions={dimensions}: this model returns {model_dimension}; send 1 .. {model_dimension}",
            param="dimensions",
        )


def finish_vectors(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Keep the first `dimensions` values, THEN L2-normalize: a Matryoshka-trained model's prefix is a smaller
    embedding only once it is re-normalized (normalizing first would leave vectors of norm < 1)."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    return normalize_rows(vectors) if normalize else vectors
