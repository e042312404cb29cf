"""Shared by every family's and metric's tiny stand-ins: seeding, folder swaps, tokenizers.

Seeds come from each model's name (crc32), so a tiny model's weights depend on nothing
else; tokenizers are learnt from one small corpus, deterministically.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

CORPUS = """
A photo of a person, portrait, studio lighting, 35mm film, close-up, smiling.
An astronaut in a white spacesuit standing in front of an American flag.
A woman wearing a red coat walking in the snow at night, cinematic.
A man with glasses reading a book in a library, warm light, bokeh.
Oil painting of a child in a garden, impressionist style, soft colours.
Headshot of a scientist in a laboratory, sharp focus, high detail.
A chef cooking in a busy kitchen; steam, motion blur, photorealistic!
Watercolor portrait of an old fisherman by the sea, "golden hour".
Selfie on a mountain summit with clouds below, wide angle, 4k.
Anime style drawing of a girl with blue hair under cherry blossoms.
"""


def _seed(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode())


def manual_seed(name: str) -> None:
    import torch

    torch.manual_seed(_seed(name))


def _corpus_lines() -> list[str]:
    lines = [line.strip() for line in CORPUS.strip().splitlines()]
    return lines + [line.lower() for line in lines] + [line.upper() for line in lines]


def _words(lines: list[str], pattern: str) -> Counter[str]:
    import regex

    return Counter(w for line in lines for w in regex.findall(pattern, line))


def _bpe_merges(words: Counter[tuple[str, ...]], count: int) -> list[tuple[str, str]]:
    """Plain byte-pair merges; ties go to the alphabetically first pair, so the result
    never depends on hash order (the `tokenizers` trainer's does)."""
    merges = []
    words = Counter(words)
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, freq in words.items():
            out, k = [], 0
            while k < len(symbols):
                if symbols[k : k + 2] == best:
                    out.append(best[0] + best[1])
                    k += 2
                else:
                    out.append(symbols[k])
                    k += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def build_clip_tokenizer(folder: Path):
    """A byte-level BPE CLIP tokenizer learnt from a small corpus, saved and reloaded."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    byte_level = ByteLevel(add_prefix_space=False)
    counts = _words([line.lower() for line in _corpus_lines()], r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
    words: Counter[tuple[str, ...]] = Counter()
    for word, freq in counts.items():
        mapped = byte_level.pre_tokenize_str(word)[0][0]
        words[(*mapped[:-1], mapped[-1] + "</w>")] += freq
    merges = _bpe_merges(words, 150)
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    tokens += [a + b for a, b in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def build_t5_tokenizer(folder: Path):
    """A Unigram T5 tokenizer: every corpus word and character as a piece, scored by
    log frequency (deterministic), saved and reloaded."""
    import math

    from transformers import T5TokenizerFast

    counts = _words(_corpus_lines(), r"\S+")
    chars = Counter(c for word, freq in counts.items() for c in word for _ in range(freq))
    total = sum(counts.values()) + sum(chars.values())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", math.log(len(counts) / total))]
    pieces += [(f"▁{w}", math.log(f / total)) for w, f in sorted(counts.items())]
    pieces += [(c, math.log(f / total) - 5.0) for c, f in sorted(chars.items())]  # fallback pieces
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


#: Qwen3's chat format for one user turn, as its template renders it (thinking switched off when
#: the caller passes ``enable_thinking=False``, as FLUX.2 [klein]'s pipeline does)
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def build_qwen_tokenizer(folder: Path):
    """A byte-level BPE Qwen2 tokenizer (Qwen3's class) with Qwen's chat special tokens and a
    chat template, learnt from the small corpus, saved and reloaded."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2TokenizerFast

    byte_level = ByteLevel(add_prefix_space=False)
    counts = _words(_corpus_lines(), r" ?[\p{L}]+| ?[\p{N}]| ?[^\s\p{L}\p{N}]+|\s+")
    words: Counter[tuple[str, ...]] = Counter()
    for word, freq in counts.items():
        words[tuple(byte_level.pre_tokenize_str(word)[0][0])] += freq
    merges = _bpe_merges(words, 150)
    tokens = [*sorted(ByteLevel.alphabet()), *(a + b for a, b in merges)]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        model_max_length=40960,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return Qwen2TokenizerFast.from_pretrained(folder)
