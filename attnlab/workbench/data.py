"""Text data for training and evaluation: the embedded Shakespeare corpus, local files or Hub datasets, split
into train and validation by whole documents, and tokenized into fixed-size blocks or one evaluation stream.

Validation never shares a document with training: either it comes from its own files or split, or it is the
tail of the documents (Shakespeare: whole held-out plays). Documents are joined with the tokenizer's eos.
"""

import codecs
import functools
import gzip
import logging
import os
import re
from importlib import resources

import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

from .hub import hub_unreachable
from ..tokenization_attnlab import existing_files

logger = logging.getLogger(__name__)

# Whole plays held out for validation, spread through the (alphabetical) corpus: a comedy, a tragedy and a
# comedy, 6.1% of the text. None of them is quoted in another work of the corpus (The Passionate Pilgrim
# reprints Love's Labour's Lost and two Sonnets, so those stay in training together).
SHAKESPEARE_VALIDATION_TITLES = ("THE COMEDY OF ERRORS", "MACBETH", "TWELFTH NIGHT; OR, WHAT YOU WILL")

# Every work in the corpus opens with its title line, at most one blank line, then this byline.
_SHAKESPEARE_TITLE = re.compile(r"^(?P<title>[^\n]+)\n\n?by William Shakespeare\n", re.MULTILINE)

# The `datasets` builder for each supported file type.
_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@functools.cache
def shakespeare_text() -> str:
    """The embedded corpus: the complete works of Shakespeare (public domain), about 5 MB of ASCII text."""
    packed = resources.files("attnlab.workbench").joinpath("corpus/shakespeare.txt.gz").read_bytes()
    return gzip.decompress(packed).decode("utf-8")


def shakespeare_documents() -> list[dict[str, str]]:
    """The corpus as one {"title", "text"} per work (play, poem or the Sonnets), in corpus order."""
    text = shakespeare_text()
    starts = [match.start() for match in _SHAKESPEARE_TITLE.finditer(text)] + [len(text)]
    titles = _SHAKESPEARE_TITLE.findall(text)
    return [{"title": title, "text": text[start:end].strip()} for title, start, end in zip(titles, starts, starts[1:])]


def shakespeare_splits() -> DatasetDict:
    """Train and validation with columns "title" and "text", one row per work; the held-out plays are
    `SHAKESPEARE_VALIDATION_TITLES`."""
    documents = shakespeare_documents()
    missing = set(SHAKESPEARE_VALIDATION_TITLES) - {document["title"] for document in documents}
    if missing:
        raise ValueError(f"held-out plays not found in the embedded corpus: {sorted(missing)}")
    held_out = [document["title"] in SHAKESPEARE_VALIDATION_TITLES for document in documents]
    return DatasetDict({
        "train": Dataset.from_list([doc for doc, out in zip(documents, held_out) if not out]),
        "validation": Dataset.from_list([doc for doc, out in zip(documents, held_out) if out]),
    })


def load_text_splits(train_files: str | list[str] | None = None, validation_files: str | list[str] | None = None,
                     dataset_name: str | None = None, dataset_config: str | None = None, text_column: str = "text",
                     validation_fraction: float = 0.05) -> DatasetDict:
    """Train and validation splits of documents from the embedded Shakespeare (nothing given), local files, or a
    Hub dataset.

    Local files may be .txt (one document per paragraph, i.e. per blank-line-separated block, so that whole
    paragraphs can be held out), .json/.jsonl, .parquet or .csv (one document per row, text in `text_column`).
    Without validation files or a "validation" split, the last `validation_fraction` of the documents is held out.
    Blank documents are dropped.
    """
    if train_files is None and validation_files is None and dataset_name is None:
        return shakespeare_splits()
    if dataset_name is not None and (train_files is not None or validation_files is not None):
        raise ValueError("pass either dataset_name or train_files/validation_files, not both")
    if dataset_name is None and train_files is None:
        raise ValueError("validation_files need train_files as well")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} must be between 0 and 1")

    splits = _load_hub(dataset_name, dataset_config) if dataset_name else _load_files(train_files, validation_files)
    splits = DatasetDict({name: _drop_blank(split, text_column, name) for name, split in splits.items()})
    if "validation" not in splits:
        splits = _hold_out_tail(splits["train"], validation_fraction)
    return splits


def _load_files(train_files, validation_files) -> DatasetDict:
    data_files = {"train": existing_files(train_files, "data file")}
    if validation_files is not None:
        data_files["validation"] = existing_files(validation_files, "data file")
    builders = set()
    for path in sum(data_files.values(), []):
        extension = os.path.splitext(path)[1].lower()
        if extension not in _BUILDERS:
            raise ValueError(f"unsupported data file {path}: use one of {', '.join(_BUILDERS)}")
        builders.add(_BUILDERS[extension])
    if len(builders) > 1:
        raise ValueError(f"data files mix formats ({', '.join(sorted(builders))}); convert them to one format")
    builder = builders.pop()
    if builder in ("text", "json", "csv"):
        for path in sum(data_files.values(), []):
            check_utf8(path)
    options = {"sample_by": "paragraph"} if builder == "text" else {}
    return load_dataset(builder, data_files=data_files, **options)


def check_utf8(path: str, chunk_size: int = 1 << 20):
    """Raise ValueError naming the file and the byte offset of the first bytes that are not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as file:
        while True:
            chunk = file.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                # error.start counts from the bytes the decoder still held back from the previous chunk.
                position = offset - len(decoder.getstate()[0]) + error.start
                raise ValueError(f"{path} is not UTF-8 text: byte {position} (0x{error.object[error.start]:02x}) "
                                 f"cannot be decoded; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            if not chunk:
                return
            offset += len(chunk)


def _load_hub(dataset_name: str, dataset_config: str | None) -> DatasetDict:
    if not os.path.exists(dataset_name):
        unreachable = hub_unreachable(dataset_name, repo_type="dataset")
        if unreachable:
            raise ValueError(f"--dataset_name {dataset_name}: not a local folder, and {unreachable}")
    try:
        splits = load_dataset(dataset_name, dataset_config)
    except (OSError, ValueError) as error:  # ConnectionError, DatasetNotFoundError, a bad config name, ...
        message = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ValueError(f"--dataset_name {dataset_name}: {message}") from None
    if "train" not in splits:
        raise ValueError(f"dataset {dataset_name!r} has no 'train' split (it has {sorted(splits)})")
    return DatasetDict({name: splits[name] for name in ("train", "validation") if name in splits})


def _drop_blank(dataset: Dataset, text_column: str, split: str) -> Dataset:
    if text_column not in dataset.column_names:
        raise ValueError(f"the {split} data has no column {text_column!r} (it has {dataset.column_names}); "
                         f"pass --text_column")
    dataset = dataset.filter(lambda texts: [bool(text and text.strip()) for text in texts],
                             input_columns=text_column, batched=True)
    if len(dataset) == 0:
        raise ValueError(f"the {split} data has no text in column {text_column!r}")
    return dataset


def _hold_out_tail(dataset: Dataset, validation_fraction: float) -> DatasetDict:
    """The last documents as validation, so the two splits share no document (and, for ordered data, no era)."""
    num_validation = round(len(dataset) * validation_fraction)
    if num_validation == 0 or num_validation == len(dataset):
        raise ValueError(f"holding out {validation_fraction:.0%} of the {len(dataset)} training documents leaves "
                         f"{'validation' if num_validation == 0 else 'train'} empty; pass --validation_files (or "
                         f"more documents: a .txt file has one per blank-line-separated paragraph)")
    num_train = len(dataset) - num_validation
    return DatasetDict({"train": dataset.select(range(num_train)),
                        "validation": dataset.select(range(num_train, len(dataset)))})


def _token_ids(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, text_column: str,
               num_proc: int | None) -> pa.Array:
    """All the documents' ids as one flat array, documents joined by eos."""
    if text_column not in dataset.column_names:
        raise ValueError(f"the dataset has no column {text_column!r} (it has {dataset.column_names})")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token to put between documents")

    def tokenize(texts):
        ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return {"input_ids": [document + [eos] for document in ids]}

    tokenized = dataset.map(tokenize, input_columns=text_column, batched=True, num_proc=num_proc,
                            remove_columns=dataset.column_names, desc="tokenizing")
    ids = pc.list_flatten(tokenized.data.column("input_ids")).combine_chunks().cast(pa.int64())
    return ids[:-1]  # eos goes between documents, not after the last one


def pack_blocks(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int, text_column: str = "text",
                num_proc: int | None = None, split: str = "") -> Dataset:
    """The documents joined by eos and cut into rows of exactly `block_size` ids (column "input_ids").

    The final partial block is dropped (and logged), so every row is a full training window.
    """
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size={block_size} must be an integer of at least 2 (an input and a target)")
    ids = _token_ids(dataset, tokenizer, text_column, num_proc)
    num_blocks = len(ids) // block_size
    if num_blocks == 0:
        raise ValueError(f"the {split + ' ' if split else ''}split has {len(ids)} tokens, fewer than one block of "
                         f"block_size={block_size}; use a smaller --block_size or more text")
    logger.info("packed %d tokens into %d blocks of %d, dropping the final %d tokens", len(ids), num_blocks,
                block_size, len(ids) - num_blocks * block_size)
    blocks = pa.FixedSizeListArray.from_arrays(ids[: num_blocks * block_size], block_size)
    return Dataset(pa.table({"input_ids": blocks}))


def token_stream(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, text_column: str = "text") -> torch.LongTensor:
    """Every id of the split in one 1-D tensor (documents joined by eos), for sliding-window evaluation."""
    return torch.from_numpy(_token_ids(dataset, tokenizer, text_column, num_proc=None).to_numpy().copy())
