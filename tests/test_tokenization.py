import pytest
from transformers import AutoTokenizer

from attnlab.tokenization_attnlab import (
    SPECIAL_TOKENS, byte_tokenizer, load_tokenizer, token_byte_lengths, train_bpe_tokenizer,
)

TEXTS = [
    "plain ASCII, with punctuation: a . b , c !",
    "line one\nline two\r\n\n\ttabbed   three spaces  \n",
    "  leading and trailing spaces  ",
    "non-ASCII: café, naïve, Straße, 漢字, Ελληνικά",
    "emoji 🙂👍🏽 and a ZWJ family 👨‍👩‍👧",
    "",
]

TRAINING_TEXT = ("From fairest creatures we desire increase,\nThat thereby beauty's rose might never die,\n"
                 "But as the riper should by time decease,\nHis tender heir might bear his memory:\n") * 20


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "train.txt"
    path.write_text(TRAINING_TEXT)
    return train_bpe_tokenizer([path], vocab_size=300)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_ids_are_the_bytes_and_round_trip(text):
    tok = byte_tokenizer()
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids).encode("utf-8") == text.encode("utf-8")


def test_byte_special_tokens():
    tok = byte_tokenizer()
    assert len(tok) == 259
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 258)
    assert tok.special_tokens_map == SPECIAL_TOKENS
    # Nothing is added on encode, even when asked to add special tokens.
    assert tok("ab", add_special_tokens=True)["input_ids"] == [97, 98]
    # The special tokens are recognised in text and skipped on request.
    assert tok("<bos>a<eos>")["input_ids"] == [257, 97, 258]
    assert tok.decode([257, 97, 258], skip_special_tokens=True) == "a"


def test_save_and_reload_without_attnlab_classes(tmp_path):
    tok = byte_tokenizer()
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    for reloaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(tmp_path),
                     load_tokenizer(tmp_path / "tokenizer.json")):
        assert len(reloaded) == 259 and reloaded.eos_token_id == 258 and reloaded.pad_token_id == 256
        for text in TEXTS:
            ids = reloaded(text)["input_ids"]
            assert ids == list(text.encode()) and reloaded.decode(ids) == text


def test_load_tokenizer_bytes_and_missing(tmp_path):
    assert len(load_tokenizer("bytes")) == 259
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        load_tokenizer(tmp_path / "no_such_tokenizer")


@pytest.mark.parametrize("text", TEXTS + [TRAINING_TEXT])
def test_bpe_round_trip(bpe, text):
    ids = bpe(text)["input_ids"]
    assert bpe.decode(ids) == text


def test_bpe_layout_and_merges(bpe, tmp_path):
    assert len(bpe) == 300
    assert (bpe.pad_token_id, bpe.bos_token_id, bpe.eos_token_id) == (256, 257, 258)
    assert bpe.convert_tokens_to_ids("a") == ord("a")  # bytes keep their ids
    assert len(bpe(TRAINING_TEXT)["input_ids"]) < 0.6 * len(TRAINING_TEXT)  # 41 merges already compress
    bpe.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(TRAINING_TEXT)["input_ids"] == bpe(TRAINING_TEXT)["input_ids"]


@pytest.mark.parametrize("text", TEXTS + [TRAINING_TEXT])
def test_token_byte_lengths_are_exact(bpe, text):
    for tok in (byte_tokenizer(), bpe):
        lengths = token_byte_lengths(tok)
        assert lengths.shape == (len(tok),)
        ids = tok(text)["input_ids"]
        assert lengths[ids].sum().item() == len(text.encode("utf-8"))
        assert lengths[[tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]].tolist() == [0, 0, 0]


def test_bpe_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_bpe_tokenizer([tmp_path / "missing.txt"], vocab_size=300)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        train_bpe_tokenizer([empty], vocab_size=300)
    with pytest.raises(ValueError, match="at least one"):
        train_bpe_tokenizer([], vocab_size=300)
    text = tmp_path / "text.txt"
    text.write_text(TRAINING_TEXT)
    with pytest.raises(ValueError, match="vocab_size=258 is too small"):
        train_bpe_tokenizer(text, vocab_size=258)
