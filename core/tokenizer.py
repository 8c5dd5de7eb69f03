"""GPT-2 BPE through tiktoken, built from the ranks file shipped beside this module (works offline)."""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

from core.config import EOT_TOKEN

RANKS_FILE = Path(__file__).with_name("r50k_base.tiktoken")
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = "<|endoftext|>"


class TokenizerError(RuntimeError):
    pass


def _load_ranks(path: Path) -> dict[bytes, int]:
    if not path.is_file():
        raise TokenizerError(f"GPT-2 BPE ranks file missing: {path}; restore it from the repository")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise TokenizerError(
            f"GPT-2 BPE ranks file {path} is corrupt (sha256 {digest[:12]}..., expected "
            f"{RANKS_SHA256[:12]}...); restore it from the repository"
        )
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding (identical to tiktoken's "gpt2"/"r50k_base"), loaded once per process."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=_load_ranks(RANKS_FILE),
        special_tokens={EOT: EOT_TOKEN},
    )


def tokenizer_hash() -> str:
    """Identifies the tokenizer in data caches, so a cache made with another one is never reused."""
    return RANKS_SHA256[:16]


def encode(text: str, allow_special: bool = True) -> list[int]:
    """Encode text; <|endoftext|> in the text becomes token 50256 when allow_special."""
    enc = get_encoding()
    if allow_special:
        return enc.encode(text, allowed_special={EOT})
    return enc.encode_ordinary(text)


def decode(tokens: Iterable[int]) -> str:
    return get_encoding().decode(list(tokens), errors="replace")


def token_bytes(token: int) -> bytes:
    return get_encoding().decode_single_token_bytes(token)


def token_str(token: int) -> str:
    """A readable label for one token (for charts): invalid UTF-8 pieces shown as escapes."""
    return token_bytes(token).decode("utf-8", errors="backslashreplace")


class StreamDecoder:
    """Turns tokens into text one at a time without emitting half a UTF-8 character.

    A multi-byte character can be split over several GPT-2 tokens; the incremental decoder holds
    the incomplete bytes until the rest arrive.
    """

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._dec.decode(token_bytes(token))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
