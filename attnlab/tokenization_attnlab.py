"""Tokenizers for attnlab: a lossless byte-level tokenizer and byte-level BPE trained on your own text.

Both are stock `PreTrainedTokenizerFast` objects built with the `tokenizers` library, so a folder written by
`save_pretrained` loads with `AutoTokenizer.from_pretrained` without attnlab or remote code.

Both share one layout, so the byte tokenizer is simply the BPE with no merges:

- ids 0..255 are the 256 bytes, id == byte value;
- ids 256, 257, 258 are `<pad>`, `<bos>`, `<eos>`;
- ids 259.. are the BPE merges, in the order they were learned.

Encoding never adds special tokens, whatever `add_special_tokens` says: the data pipeline (`attnlab.workbench.data`) places
`<eos>` between documents itself, so a tokenizer call always returns exactly the text's tokens and decoding
gives back exactly the text.
"""

import json
import os
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}

# GPT-2's printable stand-in character for each byte, which is how byte-level tokenizers store bytes as strings.
_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {char: byte for byte, char in _BYTE_TO_CHAR.items()}
_MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _byte_level_tokenizer(merges: list[tuple[str, str]], split_words: bool,
                          model_max_length: int) -> PreTrainedTokenizerFast:
    """The shared layout: bytes by value, then the special tokens, then one token per merge."""
    vocab = {_BYTE_TO_CHAR[byte]: byte for byte in range(256)}
    for token in SPECIAL_TOKENS.values():
        vocab[token] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    # add_prefix_space=False: a leading space would be invented text and break the round trip.
    # use_regex splits words so merges never cross them; with no merges it would only cost time.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS.values()))
    # clean_up_tokenization_spaces would turn " ." into "." on decode, so it stays off for a lossless round trip.
    # Padding on the left, the decoder-only convention: a batch of prompts padded by hand generates correctly.
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False, padding_side="left", **SPECIAL_TOKENS)


def byte_tokenizer(model_max_length: int = 1_000_000) -> PreTrainedTokenizerFast:
    """The lossless byte tokenizer: 256 byte ids (id == byte value) plus `<pad>`=256, `<bos>`=257, `<eos>`=258."""
    return _byte_level_tokenizer([], split_words=False, model_max_length=model_max_length)


def existing_files(files: str | os.PathLike | Iterable[str | os.PathLike], kind: str) -> list[str]:
    """One path or many as a list of strings, each an existing, non-empty file (`kind` names them in errors)."""
    paths = [os.fspath(files)] if isinstance(files, (str, os.PathLike)) else [os.fspath(f) for f in files]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{kind} not found: {path}")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{kind} is empty: {path}")
    return paths


def train_bpe_tokenizer(files: str | os.PathLike | Iterable[str | os.PathLike], vocab_size: int,
                        min_frequency: int = 2, model_max_length: int = 1_000_000) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on text files: every byte stays encodable, so the round trip is lossless."""
    files = existing_files(files, "tokenizer training file")
    if not files:
        raise ValueError("train_bpe_tokenizer needs at least one text file")
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {_MIN_VOCAB_SIZE} "
                         f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")

    # The trainer knows nothing of the special tokens; they are placed after the bytes when the vocab is rebuilt.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    scratch = Tokenizer(models.BPE())
    scratch.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    scratch.train(files, trainer)
    merges = [tuple(merge) for merge in json.loads(scratch.to_str())["model"]["merges"]]
    return _byte_level_tokenizer(merges, split_words=True, model_max_length=model_max_length)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """"bytes" for the byte tokenizer, else a folder written by `save_pretrained` or a tokenizer.json file."""
    name_or_path = os.fspath(name_or_path)
    if name_or_path == "bytes":
        return byte_tokenizer()
    # Checked here so that a typo is reported as a missing path rather than tried as a Hub repository.
    if os.path.isfile(name_or_path):
        # A bare tokenizer.json does not say which tokens are pad/bos/eos; name ours where the file has them.
        backend = Tokenizer.from_file(name_or_path)
        specials = {key: token for key, token in SPECIAL_TOKENS.items() if backend.token_to_id(token) is not None}
        return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                       model_max_length=1_000_000, padding_side="left", **specials)
    if os.path.isdir(name_or_path):
        return AutoTokenizer.from_pretrained(name_or_path)
    raise FileNotFoundError(f"tokenizer not found: {name_or_path!r}; pass 'bytes', a folder written by "
                            f"save_pretrained, or a tokenizer.json file")


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> torch.LongTensor:
    """How many UTF-8 bytes each id decodes to (0 for special tokens), for exact bits-per-byte.

    Read from the byte-level vocabulary rather than from `decode`, which cannot show a lone byte of a multi-byte
    character (it becomes U+FFFD, three bytes).
    """
    special_ids = set(tokenizer.all_special_ids)
    lengths = torch.zeros(len(tokenizer), dtype=torch.long)
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(range(len(tokenizer)))):
        if token_id in special_ids:
            continue
        if any(char not in _CHAR_TO_BYTE for char in token):
            raise ValueError(f"token {token_id} ({token!r}) is not a byte-level token; exact byte lengths need a "
                             f"byte-level tokenizer such as attnlab's byte or BPE tokenizers")
        lengths[token_id] = len(token)
    return lengths
