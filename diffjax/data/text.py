"""A word-level tokenizer for the templated captions of diffjax's captioned datasets.

Word-level rather than a BPE library (e.g. `tokenizers` with a CLIP vocabulary): the captions
here come from a closed set of templates and class names, so a vocabulary built from them is
complete, tiny (tens of words) and exact; a BPE vocabulary would have to be trained or
downloaded (no download is possible here) and would only split the same words into pieces.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case words (hyphenated words such as "t-shirt" kept whole) and punctuation marks,
    each its own token: "A seven, then a two." -> [a, seven, ",", then, a, two, "."]."""
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
    """Caption -> int32 token ids [context_length], padded with <pad> = 0.

    Ids: 0 <pad>, 1 <unk>, then <bos> = 2 and <eos> = 3 when `add_bos_eos`, then the words in
    sorted order. A word not in the vocabulary maps to <unk> (1): a prompt may use unseen
    words, and the encoder sees that something unknown was there. A caption whose tokens
    (with <bos>/<eos>) exceed `context_length` raises ValueError naming both lengths; nothing is
    truncated silently.

    Attributes:
      words: the vocabulary words (no special tokens), in id order.
      context_length: L, the fixed token length.
      add_bos_eos: wrap each caption in <bos> ... <eos> (the EOS state can be the pooled one).
    """

    words: tuple[str, ...]
    context_length: int = 16
    add_bos_eos: bool = True

    def __post_init__(self):
        if self.context_length < 1 + 2 * self.add_bos_eos:
            raise ValueError(f"context_length {self.context_length} is too short")
        if len(set(self.words)) != len(self.words) or set(self.words) & set(self.specials):
            raise ValueError("vocabulary words must be unique and not special tokens")

    @classmethod
    def from_captions(
        cls, captions: Iterable[str], context_length: int | None = None, add_bos_eos: bool = True
    ) -> WordTokenizer:
        """The vocabulary of every word in `captions`; context_length defaults to the longest
        caption's token count (with <bos>/<eos>)."""
        split = [split_words(c) for c in captions]
        if not split:
            raise ValueError("from_captions needs at least one caption")
        longest = max(len(s) for s in split) + 2 * add_bos_eos
        words = tuple(sorted({w for s in split for w in s}))
        return cls(words, context_length or longest, add_bos_eos)

    @property
    def specials(self) -> tuple[str, ...]:
        return (PAD, UNK, BOS, EOS) if self.add_bos_eos else (PAD, UNK)

    @property
    def vocab(self) -> tuple[str, ...]:
        return self.specials + self.words

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def _ids(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocab)}

    def encode(self, caption: str) -> np.ndarray:
        """One caption -> int32 ids [context_length] (see the class docstring)."""
        ids, words = self._ids(), split_words(caption)
        if self.add_bos_eos:
            words = [BOS, *words, EOS]
        if len(words) > self.context_length:
            raise ValueError(
                f"caption {caption!r} has {len(words)} tokens, longer than the context length "
                f"{self.context_length}"
            )
        out = np.zeros(self.context_length, np.int32)
        out[: len(words)] = [ids.get(w, self.unk_id) for w in words]
        return out

    def __call__(self, captions: str | Sequence[str]) -> np.ndarray:
        """Captions -> int32 [B, context_length] (a single string gives [1, L])."""
        if isinstance(captions, str):
            captions = [captions]
        return np.stack([self.encode(c) for c in captions])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Ids -> words joined by spaces, dropping <pad>, <bos> and <eos> (keeping <unk>)."""
        vocab, drop = self.vocab, {PAD, BOS, EOS}
        return " ".join(vocab[int(i)] for i in np.asarray(ids) if vocab[int(i)] not in drop)
