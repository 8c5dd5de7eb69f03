"""The offline GPT-2 tokenizer: known ids, round trips, streaming decode, ranks file integrity."""

import pytest

from core import tokenizer
from core.tokenizer import EOT, StreamDecoder, TokenizerError, decode, encode, token_str


def test_known_ids():
    assert encode("Hello world<|endoftext|>") == [15496, 995, 50256]
    assert 50256 not in encode("Hello world<|endoftext|>", allow_special=False)
    assert decode([15496, 995, 50256]) == "Hello world" + EOT


@pytest.mark.parametrize(
    "text", ["", "ROMEO:\nBut soft, what light...", "  spaces\t\ttabs\r\n", "naïve café 東京 🤖 ∑x²", "a" * 3000]
)
def test_round_trip(text):
    assert decode(encode(text)) == text


def test_stream_decoder_never_emits_half_characters():
    text = "Hi 😀👍🏽 世界 🎉 مرحبا ok"
    tokens = encode(text)
    dec = StreamDecoder()
    pieces = [dec.push(t) for t in tokens]
    pieces.append(dec.flush())
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == text
    assert "" in pieces[:-1], "no character was split over tokens; the test would prove nothing"
    assert "\ufffd" in decode(tokens[:2] + tokens[3:])  # plain decode of a broken sequence does show it


def test_token_str_escapes_partial_bytes():
    partial = next(t for t in encode("😀") if not tokenizer.token_bytes(t).decode("utf-8", "ignore"))
    assert token_str(partial).startswith("\\x")
    assert token_str(15496) == "Hello"


def test_corrupt_or_missing_ranks_file_is_reported(tmp_path, monkeypatch):
    bad = tmp_path / "r50k_base.tiktoken"
    data = bytearray(tokenizer.RANKS_FILE.read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(tokenizer, "RANKS_FILE", bad)
    tokenizer.get_encoding.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="corrupt"):
            encode("hello")
        monkeypatch.setattr(tokenizer, "RANKS_FILE", tmp_path / "missing.tiktoken")
        with pytest.raises(TokenizerError, match="missing"):
            encode("hello")
    finally:
        monkeypatch.undo()
        tokenizer.get_encoding.cache_clear()
    assert encode("hello") == [31373]
