"""Request bodies: text-embeddings-inference (`/embed`, `/`, `/tokenize`, `/decode`) and OpenAI (`/v1/...`).

Types live here (422 on mismatch); the limits that need the tokenizer, the model or settings (400 / 413) are
checked in the routes, so every limit gets its own status code.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr


def _lower(value):
    # TEI's clients send "Left" / "Right" (its Rust enum's names); its docs say "left" / "right".
    return value.lower() if isinstance(value, str) else value


TruncationDirection = Annotated[Literal["left", "right"], BeforeValidator(_lower)]


class EmbedRequest(BaseModel):
    """TEI's /embed (and POST /). `truncate` omitted: the server's AUTO_TRUNCATE, as TEI does."""

    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr]
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    truncation_direction: TruncationDirection = "right"
    prompt_name: StrictStr | None = None
    dimensions: StrictInt | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[StrictInt] | list[list[StrictInt]]
    skip_special_tokens: StrictBool = True


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class OpenAIEmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. "user", which we accept and ignore

    # Text, texts, or token ids ([int] one input, [[int]] several): what ids mean is the TOKEN_IDS setting.
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(default="embedding-lab", description="who serves it (OpenAI: the owning organization)")


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]
