"""Text <-> token ids in a run's own tokenization (bytes, or the BPE tokenizer its results.json names): what the
sampling CLI, the sample stage and the lm-evaluation-harness adapter read and write."""
from __future__ import annotations

import codecs

from .errors import ActionableError


class TokenizerUnreadable(ActionableError):
    """The run's BPE tokenizer file cannot be read; the message says where it should be."""


def is_text(data: dict) -> bool:
    """Whether a run's data section (results.json ``data``) is text this module can encode: bytes or BPE, not the
    ids of a synthetic task."""
    return data.get("tokenizer", "bytes") in ("bytes", "bpe")


class Codec:
    """Text <-> token ids in a run's tokenization; ``stream`` turns ids into text as they come."""

    def __init__(self, data: dict):
        self.bpe = None
        if data.get("tokenizer", "bytes") == "bpe":
            import tokenizers

            path = data.get("tokenizer_path")
            try:
                self.bpe = tokenizers.Tokenizer.from_file(path)
            except Exception as e:  # noqa: BLE001 - any failure to read it is the same advice
                raise TokenizerUnreadable(f"the run's BPE tokenizer {path} cannot be read ({type(e).__name__}); it "
                                          f"lives in the data cache (data.cache_dir): rerun the data stage on this "
                                          f"machine") from None
        self.ids: list[int] = []
        self.shown = ""
        self.bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text).ids if self.bpe is not None else list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return self.bpe.decode(ids) if self.bpe is not None else bytes(ids).decode("utf-8", errors="replace")

    def reset_stream(self) -> None:
        """Start a new stream (the next ``stream`` call begins a new text)."""
        self.ids, self.shown = [], ""
        self.bytes.reset()

    def flush_stream(self) -> str:
        """What the stream still holds at its end (the bytes of a cut-off UTF-8 character, as a replacement)."""
        return self.bytes.decode(b"", final=True) if self.bpe is None else ""

    def stream(self, token: int) -> str:
        """The text the next token adds (bytes may wait for the rest of a UTF-8 character)."""
        if self.bpe is None:
            return self.bytes.decode(bytes([token]))
        self.ids.append(token)
        text = self.bpe.decode(self.ids)
        new, self.shown = text[len(self.shown):], text
        return new
