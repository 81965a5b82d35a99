"""Request bodies: text-embeddings-inference `/embed` and OpenAI `/v1/embeddings`.

Types live here (422 on mismatch); the limits that need the tokenizer or settings (400 / 413) are
checked in the routes, so every limit gets its own status code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr]
    normalize: StrictBool = True
    truncate: StrictBool = True


class OpenAIEmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. "user", which we accept and ignore

    input: StrictStr | list[StrictStr]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)


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
