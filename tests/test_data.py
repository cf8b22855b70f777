import json
import logging

import pytest
import torch
from datasets import Dataset

from attnlab.workbench.data import (
    SHAKESPEARE_VALIDATION_TITLES, load_text_splits, pack_blocks, shakespeare_documents, shakespeare_splits,
    shakespeare_text, token_stream,
)
from attnlab.tokenization_attnlab import byte_tokenizer

EOS = 258


@pytest.fixture(scope="module")
def splits():
    return shakespeare_splits()


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_shakespeare_documents_cover_the_corpus():
    documents = shakespeare_documents()
    assert len(documents) == 42
    assert documents[0]["title"] == "ALL'S WELL THAT ENDS WELL" and documents[-1]["title"] == "THE WINTER'S TALE"
    # Only whitespace falls between works.
    assert "".join("".join(d["text"].split()) for d in documents) == "".join(shakespeare_text().split())


def test_shakespeare_splits_hold_out_whole_plays(splits):
    assert splits["train"].column_names == ["title", "text"]
    assert tuple(splits["validation"]["title"]) == SHAKESPEARE_VALIDATION_TITLES
    assert len(splits["train"]) == 42 - len(SHAKESPEARE_VALIDATION_TITLES)
    assert not set(splits["train"]["title"]) & set(splits["validation"]["title"])
    train_chars = sum(map(len, splits["train"]["text"]))
    validation_chars = sum(map(len, splits["validation"]["text"]))
    assert 0.05 < validation_chars / (train_chars + validation_chars) < 0.08


def test_held_out_text_is_absent_from_training(splits):
    train = "\n".join(splits["train"]["text"])
    validation = "\n".join(splits["validation"]["text"])
    for line in ["To-morrow, and to-morrow, and to-morrow,", "If music be the food of love, play on,",
                 "They say this town is full of cozenage;"]:
        assert line in validation and line not in train
    # No substantial line of a held-out play appears anywhere in training.
    def long_lines(text):
        return {line.strip() for line in text.splitlines() if len(line.strip()) >= 40}
    assert not long_lines(train) & long_lines(validation)


def test_pack_blocks_joins_documents_with_eos_and_drops_the_tail(tok, caplog):
    dataset = Dataset.from_dict({"text": ["abc", "de", "fghij"]})
    stream = [97, 98, 99, EOS, 100, 101, EOS, 102, 103, 104, 105, 106]  # eos between documents, not after the last
    with caplog.at_level(logging.INFO, logger="attnlab.workbench.data"):
        blocks = pack_blocks(dataset, tok, block_size=5)
    assert blocks.column_names == ["input_ids"]
    assert blocks["input_ids"] == [stream[:5], stream[5:10]]
    assert "dropping the final 2 tokens" in caplog.text
    assert blocks.with_format("torch")[:]["input_ids"].dtype == torch.long
    assert token_stream(dataset, tok).tolist() == stream


def test_pack_blocks_matches_the_stream_on_shakespeare(splits, tok):
    stream = token_stream(splits["validation"], tok)
    assert stream.dtype == torch.long
    assert stream.numel() == sum(len(t.encode()) for t in splits["validation"]["text"]) + 2
    blocks = pack_blocks(splits["validation"], tok, block_size=1024).with_format("torch")[:]["input_ids"]
    assert blocks.shape == (stream.numel() // 1024, 1024)
    assert torch.equal(blocks.flatten(), stream[: blocks.numel()])


def test_pack_blocks_errors(tok):
    dataset = Dataset.from_dict({"text": ["abc", "de"]})
    with pytest.raises(ValueError, match=r"6 tokens.*block_size=7"):
        pack_blocks(dataset, tok, block_size=7)
    with pytest.raises(ValueError, match="block_size=1"):
        pack_blocks(dataset, tok, block_size=1)
    with pytest.raises(ValueError, match="no column 'body'"):
        pack_blocks(dataset, tok, block_size=2, text_column="body")


def test_load_text_splits_defaults_to_shakespeare():
    assert tuple(load_text_splits()["validation"]["title"]) == SHAKESPEARE_VALIDATION_TITLES


def test_load_text_splits_txt_holds_out_the_last_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(f"paragraph {i}\nsecond line of {i}" for i in range(40)) + "\n")
    splits = load_text_splits(train_files=str(path), validation_fraction=0.1)
    assert splits["train"]["text"][0] == "paragraph 0\nsecond line of 0"
    assert len(splits["train"]) == 36
    # datasets keeps the file's final newline on the last paragraph.
    assert splits["validation"]["text"] == [f"paragraph {i}\nsecond line of {i}" for i in range(36, 39)] + [
        "paragraph 39\nsecond line of 39\n"]


def test_load_text_splits_jsonl_with_validation_files(tmp_path):
    def write(name, texts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"body": text, "id": i}) + "\n" for i, text in enumerate(texts)))
        return str(path)
    splits = load_text_splits(train_files=[write("a.jsonl", ["one", "  ", "two"])],
                              validation_files=write("b.jsonl", ["three"]), text_column="body")
    assert splits["train"]["body"] == ["one", "two"]  # the blank document is dropped
    assert splits["validation"]["body"] == ["three"]


def test_load_text_splits_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text_splits(train_files=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        load_text_splits(train_files=str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n\n\n\n")
    with pytest.raises(ValueError, match="no text"):
        load_text_splits(train_files=str(blank))
    unsupported = tmp_path / "notes.docx"
    unsupported.write_text("text")
    with pytest.raises(ValueError, match=r"unsupported.*\.jsonl"):
        load_text_splits(train_files=str(unsupported))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"content": "a"}\n{"content": "b"}\n')
    with pytest.raises(ValueError, match="no column 'text'.*content"):
        load_text_splits(train_files=str(rows))
    with pytest.raises(ValueError, match="validation empty"):
        load_text_splits(train_files=str(rows), text_column="content")
    with pytest.raises(ValueError, match="either dataset_name or"):
        load_text_splits(train_files=str(rows), dataset_name="some/dataset")


@pytest.mark.parametrize("multiple", [1, 3])
def test_a_text_of_exactly_n_blocks_gives_n_blocks(tok, multiple):
    block = 16
    text = "".join(chr(ord("a") + i % 26) for i in range(multiple * block))  # one document: no eos is added
    blocks = pack_blocks(Dataset.from_dict({"text": [text]}), tok, block)
    assert len(blocks) == multiple
    assert bytes(sum(blocks["input_ids"], [])).decode() == text
    # Two documents joined by one eos, exactly two blocks together.
    first = text[: block - 1]
    two = pack_blocks(Dataset.from_dict({"text": [first, text[:block]]}), tok, block)
    assert len(two) == 2 and two["input_ids"][0][-1] == EOS
