"""Training any attnlab member (or the Llama baseline) as a causal LM with accelerate.

One loop for one process or many (`accelerate launch`), CPU or GPU: AdamW without weight decay on norms and
biases, linear warmup then cosine decay, gradient accumulation and clipping, optional mixed precision and
gradient checkpointing, periodic held-out evaluation, a time limit, and checkpoints that `--resume` continues
from exactly (model, optimizer, scheduler, RNG, data order and position, loss history). The result is a
Hub-ready folder (weights, modeling code, tokenizer, generation config, model card) and a metrics JSON.
"""

import ast
import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from huggingface_hub.errors import StrictDataclassError
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoModelForCausalLM, PreTrainedConfig, default_data_collator, get_cosine_schedule_with_warmup

from .data import load_text_splits, pack_blocks
from .evaluation import EvalResult, NonFiniteLossError, evaluate_blocks
from .hub import CHECKPOINT_PREFIX, check_folder, model_card
from .muon import MuonWithAdamW, seed_momentum_warmup_steps, seed_warmdown_steps, warmup_then_warmdown
from .subnormals import flush_denormal, flush_denormal_enabled, flush_denormal_state, workbench_flush
from ..members import BASELINES, HYBRIDS, MEMBERS, STACKS, get_member
from ..tokenization_attnlab import load_tokenizer, token_byte_lengths

TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"

logger = logging.getLogger(__name__)


@dataclass
class TrainArgs:
    """Everything a training run depends on; `attnlab train` exposes each field as an option of the same name."""

    model: str = field(default="triple_product", metadata={"help": "a member (" + ", ".join(MEMBERS) + "), a hybrid ("
                                                                   + ", ".join(HYBRIDS) + "), a stack ("
                                                                   + ", ".join(STACKS) + "), the baseline 'llama', "
                                                                   "or a mixer's import path (see --mixer)"})
    mixer: str | None = field(default=None, metadata={
        "help": "train a mixer written outside attnlab, 'package.module:Class' on the Python path (a stack of it; "
                "'package.module:Class+attention' for its hybrid with attention); replaces --model. Lay out other "
                "stacks with --config_overrides 'mixer_types=[...]' (a shorter list repeats to fill the depth)"})
    preset: str = field(default="tiny", metadata={"help": "size preset: tiny, small or base"})
    config_overrides: list[str] = field(default_factory=list, metadata={
        "help": "model config values as key=value (value parsed as JSON, else a string), e.g. num_hidden_layers=6"})
    config_file: str | None = field(default=None, metadata={
        "help": "a config JSON file used instead of the preset (vocab_size and special tokens still come from the "
                "tokenizer; --config_overrides apply on top)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "'bytes' (259 ids, lossless; the default) or a tokenizer folder; with --init_from, default: that "
                "model's own tokenizer"})
    train_files: list[str] | None = field(default=None, metadata={
        "help": "text files to train on (default: the embedded Shakespeare, whole plays held out)"})
    validation_files: list[str] | None = field(default=None, metadata={
        "help": "held-out text files (default: a fraction of the training text)"})
    dataset_name: str | None = field(default=None, metadata={"help": "a datasets Hub dataset instead of files"})
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    text_column: str = field(default="text", metadata={"help": "the column holding the text"})
    block_size: int = field(default=256, metadata={"help": "tokens per training sequence"})
    batch_size: int = field(default=8, metadata={"help": "sequences per micro-batch, per process"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_steps: int = field(default=200, metadata={"help": "optimizer steps (the cosine schedule ends here)"})
    optimizer: Literal["adamw", "muon"] = field(default="adamw", metadata={
        "help": "'adamw' (cosine schedule) or 'muon': torch.optim.Muon for the nn.Linear weights, AdamW for the rest "
                "at the parameter-golf ratios, linear warm-down (attnlab/workbench/muon.py); the seed's setting is "
                "--learning_rate 0.04 --weight_decay 0.01 --max_grad_norm 0"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate (with --optimizer muon: "
                                                                 "Muon's)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (not on norms and biases; with "
                                                                "--optimizer muon: Muon's, none on the rest)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of max_steps with linear warmup"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: no clipping)"})
    mixed_precision: Literal["no", "bf16", "fp16"] | None = field(default=None, metadata={
        "help": "'no' (fp32) or bf16 / fp16 autocast (default: accelerate launch's --mixed_precision, else 'no': "
                "fp32 is the fastest on CPUs without native bf16)"})
    compile: bool = field(default=False, metadata={
        "help": "run the training forward and backward through torch.compile; the first step (mostly compilation) "
                "is reported apart as compile_seconds, evaluation and saving stay eager"})
    compile_backend: str = field(default="inductor", metadata={
        "help": "torch.compile backend for --compile: inductor, or aot_eager / eager to trace without generating code"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each layer in the backward pass: less memory, ~30%% more time"})
    eval_every: int = field(default=50, metadata={"help": "evaluate on held-out blocks every N steps (0: only at the end)"})
    eval_blocks: int = field(default=32, metadata={"help": "held-out blocks scored by the periodic evaluations"})
    final_eval_blocks: int | None = field(default=None, metadata={
        "help": "held-out blocks scored by the final evaluation (default: all)"})
    save_every: int = field(default=100, metadata={"help": "write a checkpoint every N steps (0: only at the end)"})
    time_limit: float | None = field(default=None, metadata={
        "help": "stop after this many seconds of training, checkpoint, and finish as usual (evaluate and save)"})
    output_dir: str = field(default="outputs/run", metadata={"help": "where checkpoints, the model and metrics go"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "train into an output_dir that holds an earlier run: its files (as listed in its metrics.json) and "
                "checkpoints are deleted first; other files are left alone"})
    init_from: str | None = field(default=None, metadata={
        "help": "continue training (fine-tune) a saved folder or Hub model: its config and weights are the start "
                "(--model, --preset and config options are then not used)"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation and data order"})
    num_threads: int | None = field(default=None, metadata={
        "help": "CPU threads per process (default: torch's choice, one per core); 1 is much faster for small "
                "models when other jobs share the cores"})
    skip_nonfinite: bool = field(default=False, metadata={
        "help": "skip an optimizer step whose training loss is NaN or infinite (the weights stay unchanged, the step "
                "is counted in metrics.json's skipped_steps) instead of stopping the run with an error"})
    keep_subnormals: bool = field(default=False, metadata={
        "help": "do not flush subnormal floats to zero (by default the run flushes them, logged: on many Intel CPUs "
                "they make softmax attention several times slower; see docs/subnormals.md)"})


# A checkpoint can only be continued by a run that agrees on every option but these (limits, logging, paths), so an
# option added later is part of the check unless it is listed here.
RESUME_FREE_KEYS = ("eval_every", "eval_blocks", "final_eval_blocks", "save_every", "time_limit", "output_dir",
                    "resume", "overwrite_output_dir", "num_threads", "compile", "compile_backend", "skip_nonfinite",
                    "keep_subnormals")


def resume_keys(args_class) -> tuple[str, ...]:
    """The options of a trainer's arguments dataclass that a resumed run must share with its checkpoint."""
    return tuple(name for name in args_class.__dataclass_fields__ if name not in RESUME_FREE_KEYS)


RESUME_KEYS = resume_keys(TrainArgs)


# ---------------------------------------------------------------------------------------------------------------
# Checking the arguments, all up front: a bad value is one clear error before anything is loaded or written.

# name -> (smallest allowed value, whether that value itself is allowed, whether None means "not set")
_NUMERIC_BOUNDS = {
    "block_size": (2, True, False), "batch_size": (1, True, False), "gradient_accumulation_steps": (1, True, False),
    "max_steps": (1, True, False), "learning_rate": (0, False, False), "weight_decay": (0, True, False),
    "warmup_ratio": (0, True, False), "max_grad_norm": (0, True, False), "eval_every": (0, True, False),
    "eval_blocks": (1, True, False), "final_eval_blocks": (1, True, True), "save_every": (0, True, False),
    "time_limit": (0, True, True), "seed": (0, True, False), "num_threads": (1, True, True),
}


# accelerate runs fp16 on a CPU as plain fp32, while the run would record fp16.
FP16_ON_CPU = ValueError("--mixed_precision fp16 needs a GPU; on CPU use bf16 (where the CPU supports it) or no")


def check_args(args: TrainArgs):
    """Raise ValueError naming the first option with an impossible value (e.g. --max_steps 0 would never end)."""
    if args.mixer is not None:
        args.model = args.mixer
    if args.init_from is None:
        get_member(args.model)  # an unknown model, or a mixer path that does not import: one line, before any work
    for name, (low, inclusive, optional) in _NUMERIC_BOUNDS.items():
        value = getattr(args, name)
        if value is None and optional:
            continue
        integer = TrainArgs.__dataclass_fields__[name].type in (int, int | None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise ValueError(f"--{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            relation = ">=" if inclusive else ">"
            raise ValueError(f"--{name} must be {relation} {low}, got {value!r}")
    if args.warmup_ratio >= 1:
        raise ValueError(f"--warmup_ratio must be below 1 (a share of max_steps), got {args.warmup_ratio!r}")
    if args.init_from is not None and (args.config_file is not None or args.config_overrides):
        raise ValueError("--init_from continues a trained model with its own config; --config_file and "
                         "--config_overrides cannot change it (train from scratch to use them)")
    if args.mixed_precision == "fp16" and not torch.accelerator.is_available():
        raise FP16_ON_CPU
    if args.resume and args.overwrite_output_dir:
        raise ValueError("--resume continues the run in output_dir and --overwrite_output_dir deletes it; pass one")


def prepare_output_dir(args, accelerator: Accelerator):
    """Refuse to write a new run over an earlier one (or over anything else) unless --overwrite_output_dir says so.
    `args` is either trainer's arguments (TrainArgs, TimeSeriesTrainArgs): output_dir, resume, overwrite_output_dir.

    With it, only what the earlier run wrote goes (its checkpoints and the files its metrics.json lists), so no
    stale file of another model (another member's modeling code, say) stays beside the new one.
    """
    output_dir = Path(args.output_dir)
    if args.resume or not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder")
    contents = sorted(path.name for path in output_dir.iterdir())
    if not contents:
        return
    earlier = run_files(output_dir)
    if not args.overwrite_output_dir:
        if last_checkpoint(output_dir) is not None:
            what = "a checkpoint of an earlier run"
        elif earlier:
            what = "an earlier run"
        else:
            what = f"other files ({', '.join(contents[:3])}{', ...' if len(contents) > 3 else ''})"
        raise ValueError(f"--output_dir {output_dir} already holds {what}; pass --resume to continue a checkpoint, "
                         f"--overwrite_output_dir to replace the run, or choose another --output_dir")
    accelerator.wait_for_everyone()  # every process has looked before the main one deletes
    if accelerator.is_main_process:
        for name in earlier:
            (output_dir / name).unlink(missing_ok=True)
        for folder in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(folder)
    accelerator.wait_for_everyone()


def run_files(output_dir: Path) -> list[str]:
    """The files a finished run wrote into `output_dir`, as its metrics.json lists them (none if it has none)."""
    try:
        files = json.loads((output_dir / METRICS_FILE).read_text()).get("files", [])
    except (OSError, ValueError):
        return []
    # Only plain names inside the folder: a metrics.json from elsewhere must not delete outside it.
    return [name for name in files if isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")]


# ---------------------------------------------------------------------------------------------------------------
# Model and data


def parse_overrides(overrides: list[str]) -> dict:
    """['num_hidden_layers=6', 'tie_word_embeddings=false'] -> {'num_hidden_layers': 6, 'tie_word_embeddings': False}."""
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config override {item!r} is not of the form key=value")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


# Keys a saved config.json carries about the model it was saved from, not about the one being built: a config file
# copied from another member's folder must not bring that member's auto_map or architectures along.
_SAVED_CONFIG_METADATA = ("auto_map", "architectures", "transformers_version", "_name_or_path", "model_type", "dtype",
                          "torch_dtype")


def build_config(model: str, preset: str, tokenizer, block_size: int, config_overrides: list[str] = (),
                 config_file: str | None = None) -> PreTrainedConfig:
    """The model config: preset (or file) + overrides, with vocabulary and special tokens from the tokenizer."""
    member = get_member(model)
    overrides = parse_overrides(config_overrides)
    known = known_config_keys(member)
    unknown = sorted(set(overrides) - set(known))
    if unknown:  # configs accept any keyword, so a typo would otherwise be silently ignored
        raise ValueError(f"unknown {member.config_class.__name__} key(s) in --config_overrides: {unknown}")
    vocabulary = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    for key in sorted(set(overrides) & set(vocabulary)):
        if overrides[key] != vocabulary[key]:
            raise ValueError(f"--config_overrides {key}={overrides[key]!r}: {key} comes from --tokenizer (which gives "
                             f"{key}={vocabulary[key]!r}); for another vocabulary train a tokenizer with "
                             f"`attnlab tokenizer --vocab_size N` and pass it with --tokenizer")
    if config_file is not None:
        file_values = read_config_file(config_file, member)
        for key in sorted(set(file_values) & set(vocabulary)):
            if file_values[key] != vocabulary[key]:
                logger.warning("--config_file %s: %s=%r replaced by the tokenizer's %r", config_file, key,
                               file_values[key], vocabulary[key])
        values, make = {**file_values, **overrides, **vocabulary}, member.config_class
    else:
        values, make = {**overrides, **vocabulary}, functools.partial(member.preset_config, preset)
    try:
        config = make(**values)
    except StrictDataclassError as error:  # e.g. num_hidden_layers=abc: one line naming the field and the type
        raise ValueError(f"model config: {' '.join(str(error).split())}") from None
    if block_size > config.max_position_embeddings:
        raise ValueError(f"block_size {block_size} is larger than the model's max_position_embeddings "
                         f"{config.max_position_embeddings}; lower --block_size or pass "
                         f"--config_overrides max_position_embeddings={block_size}")
    return config


def read_config_file(path: str, member) -> dict:
    """A config JSON's model values: unknown keys refused (as in --config_overrides), another member's refused, the
    saved model's metadata dropped."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--config_file not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"--config_file {path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config_file {path} must hold a JSON object of config values")
    model_type = values.get("model_type")
    expected = member.config_class.model_type
    if model_type is not None and model_type != expected:
        raise ValueError(f"--config_file {path} is a {model_type!r} config but --model {member.name} needs "
                         f"{expected!r}; pass --model {model_type} or a {expected} config")
    values = {key: value for key, value in values.items() if key not in _SAVED_CONFIG_METADATA}
    unknown = sorted(set(values) - known_config_keys(member))
    if unknown:
        raise ValueError(f"unknown {member.config_class.__name__} key(s) in --config_file {path}: {unknown}")
    return values


def known_config_keys(member) -> set[str]:
    """The keys a member's config takes (a mixer stack has no default, so its test config answers)."""
    try:
        return set(member.config_class().to_dict())
    except ValueError:
        return set(member.test_config().to_dict() if not member.stack_mixer else member.build_config({}).to_dict())


def build_model(args: TrainArgs, tokenizer):
    if args.init_from is not None:
        model = load_initial_model(args.init_from, tokenizer, args.block_size)
    else:
        config = build_config(args.model, args.preset, tokenizer, args.block_size, args.config_overrides,
                              args.config_file)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model


def load_initial_model(name_or_path: str, tokenizer, block_size: int):
    """--init_from: a saved folder or Hub model, in fp32, checked against the tokenizer and the block size."""
    from .evaluation import load_pretrained  # one loader with one-line errors for every command

    model = load_pretrained(name_or_path, dtype=torch.float32)
    if model.config.vocab_size != len(tokenizer):
        raise ValueError(f"--init_from {name_or_path} has a vocabulary of {model.config.vocab_size} but the tokenizer "
                         f"has {len(tokenizer)} tokens; pass --tokenizer {name_or_path} (the one it was trained with)")
    if block_size > model.config.max_position_embeddings:
        raise ValueError(f"block_size {block_size} is larger than --init_from {name_or_path}'s "
                         f"max_position_embeddings {model.config.max_position_embeddings}; lower --block_size")
    return model


def load_any_tokenizer(name_or_path: str):
    """'bytes', a local tokenizer folder or file, or (for --init_from a Hub model) a Hub repo's tokenizer."""
    if name_or_path == "bytes" or os.path.exists(name_or_path):
        return load_tokenizer(name_or_path)
    from .evaluation import load_hub_tokenizer

    return load_hub_tokenizer(name_or_path)


def model_name(config: PreTrainedConfig) -> str:
    """The member (or baseline) name of a model's config, as --model spells it (a stack of one user mixer: its path)."""
    for member in (*MEMBERS.values(), *BASELINES.values()):
        if member.config_class.model_type == config.model_type:
            return member.name
    mixers = set(getattr(config, "mixer_types", None) or []) - {"attention"}
    if len(mixers) == 1 and ":" in next(iter(mixers)):
        path = next(iter(mixers))
        return f"{path}+attention" if "attention" in config.mixer_types else path
    return config.model_type


def load_blocks(args: TrainArgs, tokenizer):
    """Train and validation splits packed into blocks of `block_size` tokens."""
    splits = load_text_splits(train_files=args.train_files, validation_files=args.validation_files,
                              dataset_name=args.dataset_name, dataset_config=args.dataset_config,
                              text_column=args.text_column)
    return tuple(pack_blocks(splits[name], tokenizer, args.block_size, text_column=args.text_column, split=name)
                 for name in ("train", "validation"))


def optimizer_for(model, args: TrainArgs) -> torch.optim.AdamW:
    # Matrices (and embeddings) decay; 1-D parameters (norm gains, biases, per-channel gates) do not.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=args.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))


def build_optimizer(model, args: TrainArgs, num_processes: int = 1):
    """The optimizer and its learning-rate schedule. The prepared scheduler steps once per process per optimizer step
    (as in transformers' run_clm_no_trainer), hence the step counts times num_processes."""
    warmup_steps = math.ceil(args.warmup_ratio * args.max_steps) * num_processes
    total_steps = args.max_steps * num_processes
    if args.optimizer == "adamw":
        optimizer = optimizer_for(model, args)
        return optimizer, get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps,
                                                          num_training_steps=total_steps)
    optimizer = MuonWithAdamW(model, lr=args.learning_rate, weight_decay=args.weight_decay,
                              momentum_warmup_steps=seed_momentum_warmup_steps(args.max_steps))
    warmdown_steps = seed_warmdown_steps(args.max_steps) * num_processes
    return optimizer, LambdaLR(optimizer, lambda step: warmup_then_warmdown(step, warmup_steps, total_steps,
                                                                            warmdown_steps))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: `checkpoint-<step>` folders, each written under a temporary name and renamed when complete, so an
# interrupted save never leaves a half-written checkpoint where --resume would find it. Only the last is kept, and
# none once the run has reached max_steps.


class CheckpointedBuffers:
    """A model's `checkpointed_buffers` (training counters outside its state dict) as an object accelerate's
    save_state / load_state carry, so a resumed run continues them. Every process holds the same values."""

    def __init__(self, get_model: Callable):
        self.get_model = get_model

    def state_dict(self) -> dict:
        model = self.get_model()
        return {name: model.get_buffer(name).detach().cpu().clone() for name in model.checkpointed_buffers}

    def load_state_dict(self, state: dict):
        model = self.get_model()
        for name in model.checkpointed_buffers:
            buffer = model.get_buffer(name)
            buffer.copy_(state[name].to(buffer.device))


def last_checkpoint(output_dir: str | Path) -> Path | None:
    folders = [p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return max(folders, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


class _DeclaredTiesFilter(logging.Filter):
    """Drops accelerate's "Removed shared tensor {...}" warning when every removed name is a tie the model declares
    (the tied LM head): the checkpoint reloads it from the embedding. An undeclared alias still warns."""

    def __init__(self, tied_names: set[str]):
        super().__init__()
        self.tied_names = tied_names

    def filter(self, record: logging.LogRecord) -> bool:
        found = re.search(r"Removed shared tensor (\{.*?\}) while saving", record.getMessage())  # after "[RANK n] "
        if found is None:
            return True
        try:
            removed = ast.literal_eval(found.group(1))
        except (ValueError, SyntaxError):
            return True
        return not all(any(name == tied or name.endswith(f".{tied}") for tied in self.tied_names) for name in removed)


@contextlib.contextmanager
def declared_ties_unreported(model):
    tied = getattr(model, "_tied_weights_keys", None) or {}  # None: no model, every such warning stays
    tied_names = set(tied) | set(tied.values()) if isinstance(tied, dict) else set(tied)
    accelerate_logger = logging.getLogger("accelerate.utils.other")
    quiet = _DeclaredTiesFilter(tied_names)
    accelerate_logger.addFilter(quiet)
    try:
        yield
    finally:
        accelerate_logger.removeFilter(quiet)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, model=None):
    final = output_dir / f"{CHECKPOINT_PREFIX}{state['step']}"
    temporary = output_dir / f"{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    with declared_ties_unreported(accelerator.unwrap_model(model) if model is not None else None):
        accelerator.save_state(str(temporary))  # every process writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / TRAINER_STATE).write_text(json.dumps(state, indent=1))
        os.replace(temporary, final)
        for old in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def resume_state(args, accelerator: Accelerator, config: dict) -> dict:
    """Load the last checkpoint into the prepared objects and return its trainer state; `args` is a trainer's
    arguments dataclass (TrainArgs, or the time-series trainer's).

    Refused, naming the first difference, when the checkpoint was made with another option that shapes the data or
    the model (every option but RESUME_FREE_KEYS), another number of processes or another model config (a config
    file edited in place); a checkpoint that cannot be read is named with the reason.
    """
    checkpoint = last_checkpoint(args.output_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"--resume: no {CHECKPOINT_PREFIX}* folder in {args.output_dir}")
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        saved = {**state["args"], "num_processes": state["num_processes"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--resume: {checkpoint / TRAINER_STATE} is missing or unreadable ({error}); delete "
                         f"{checkpoint} to start again") from None
    current = {**asdict(args), "num_processes": accelerator.num_processes}
    defaults = asdict(type(args)())
    for key in (*resume_keys(type(args)), "num_processes"):
        if saved.get(key, defaults.get(key)) != current[key]:  # a key added since: its default
            raise ValueError(f"--resume: {checkpoint} was trained with {key}={saved.get(key)!r}, this run has "
                             f"{key}={current[key]!r}; use the same value or another --output_dir")
    for key, value in state.get("config", {}).items():
        if config.get(key) != value:
            raise ValueError(f"--resume: {checkpoint} was trained with the model config {key}={value!r}, this run "
                             f"builds {key}={config.get(key)!r}; use the same config or another --output_dir")
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # a truncated file: safetensors, torch or pickle errors of many kinds
        raise ValueError(f"--resume: the checkpoint {checkpoint} cannot be loaded ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:300]}); delete it to start again") from None
    return state


def comparable_config(model) -> dict:
    """The model's config as the resume check compares it (JSON values, without the transformers version)."""
    values = json.loads(model.config.to_json_string(use_diff=False))
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        values.pop(key, None)
    return values


# ---------------------------------------------------------------------------------------------------------------
# The loop


def train(args: TrainArgs, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train, evaluate and save; returns the metrics also written to `output_dir/metrics.json`.

    `on_step(step, loss)` is called after every optimizer step (and after that step's checkpoint, if any). A run
    stopped by the time limit or an exception leaves its last checkpoint for `resume=True`. The run flushes
    subnormals unless `keep_subnormals` (logged); the calling thread's mode is restored when it returns.
    """
    with flush_denormal(flush_denormal_enabled()):  # the run may change the mode; the block restores the caller's
        return _train(args, on_step)


def _train(args: TrainArgs, on_step: Callable[[int, float], None] | None) -> dict:
    check_args(args)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # Shuffling seeded by (seed, epoch), so a resumed run sees the same batches in the same order.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":  # fp16 from the launcher
        raise FP16_ON_CPU
    # The tokenizer as resolved (the --init_from model's own by default) and the launcher's mixed precision, so the
    # metrics and the resume check record what actually ran.
    args = replace(args, mixed_precision=accelerator.mixed_precision,
                   tokenizer=args.tokenizer or args.init_from or "bytes")
    if args.resume and not Path(args.output_dir).is_dir():
        raise FileNotFoundError(f"--resume: no {CHECKPOINT_PREFIX}* folder in {args.output_dir}")
    prepare_output_dir(args, accelerator)
    # Before any tensor work where possible: torch's worker threads inherit the mode when they start.
    workbench_flush(args.keep_subnormals, log=accelerator.print)
    set_seed(args.seed)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    tokenizer = load_any_tokenizer(args.tokenizer)
    model = build_model(args, tokenizer)
    if args.init_from is not None:
        args = replace(args, model=model_name(model.config))
    config = comparable_config(model)
    with accelerator.main_process_first():
        train_blocks, validation_blocks = load_blocks(args, tokenizer)
    optimizer, scheduler = build_optimizer(model, args, accelerator.num_processes)
    # The loader gets its own generator: starting an iterator (each epoch, and after a resume) would otherwise draw
    # from torch's global RNG, shifting the dropout masks of a resumed run off those of the uninterrupted one.
    train_loader = DataLoader(train_blocks.select_columns(["input_ids"]), batch_size=args.batch_size, shuffle=True,
                              drop_last=True, collate_fn=default_data_collator, generator=torch.Generator())
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if getattr(accelerator.unwrap_model(model), "checkpointed_buffers", ()):
        accelerator.register_for_checkpointing(CheckpointedBuffers(lambda: accelerator.unwrap_model(model)))
    # Only the training step runs compiled: evaluation (other shapes, no grad) and saving use the prepared module,
    # which shares the weights, so neither triggers a recompilation nor sees torch.compile's wrapper.
    forward = torch.compile(model, backend=args.compile_backend) if args.compile else model
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_blocks)} training blocks are fewer than one batch of {args.batch_size} per "
                         f"process ({accelerator.num_processes} processes); lower --batch_size or --block_size")

    state = dict(step=0, batches=0, tokens=0, train_seconds=0.0, train_loss=[], eval=[],
                 args=asdict(args), num_processes=accelerator.num_processes, config=config)
    byte_lengths = token_byte_lengths(tokenizer).to(accelerator.device)
    tokens_per_step = args.batch_size * args.block_size * args.gradient_accumulation_steps * accelerator.num_processes
    num_parameters = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    origin = args.preset if args.init_from is None else f"from {args.init_from}"
    accelerator.print(f"{args.model} ({origin}): {num_parameters:,} parameters | {len(train_blocks):,} training "
                      f"blocks of {args.block_size} tokens | {tokens_per_step:,} tokens per step")
    if args.resume:
        state = resume_state(args, accelerator, config)
        accelerator.print(f"resumed from step {state['step']} of {args.max_steps}")

    def evaluate(max_blocks):
        try:
            return evaluate_blocks(accelerator.unwrap_model(model), validation_blocks, byte_lengths, args.batch_size,
                                   max_blocks=max_blocks, accelerator=accelerator)
        except NonFiniteLossError as error:
            raise ValueError(f"step {state['step']}: the held-out evaluation failed: {error}") from None

    def periodic_evaluation():
        result = evaluate(args.eval_blocks)
        return result.to_dict(), f"held-out {result}"

    def loss_of(batch):
        # The model shifts the labels itself, as in its own loss_function.
        return forward(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss

    step_seconds = training_loop(
        accelerator, model, optimizer, train_loader, state, loss_of, max_steps=args.max_steps, output_dir=output_dir,
        scheduler=scheduler, max_grad_norm=args.max_grad_norm, skip_nonfinite=args.skip_nonfinite,
        eval_every=args.eval_every, evaluate=periodic_evaluation, save_every=args.save_every,
        time_limit=args.time_limit, tokens_per_step=tokens_per_step, on_step=on_step)

    final = evaluate(args.final_eval_blocks)
    metrics = dict(model=args.model, preset=args.preset, parameters=num_parameters, steps=state["step"],
                   tokens=state["tokens"], train_seconds=round(state["train_seconds"], 3),
                   final_eval=final.to_dict(), eval=state["eval"], train_loss=state["train_loss"], args=asdict(args),
                   num_processes=accelerator.num_processes, skipped_steps=state.get("skipped_steps", 0),
                   subnormals=flush_denormal_state(),
                   **step_timing(step_seconds, args.compile))
    if args.compile and metrics["compile_seconds"] is not None:
        accelerator.print(f"torch.compile ({args.compile_backend}): {metrics['compile_seconds']:.1f} s of compilation, "
                          f"then {metrics['step_seconds'] * 1e3:.1f} ms per step")
    save_model(accelerator, model, tokenizer, output_dir, metrics)
    if state["step"] == args.max_steps and accelerator.is_main_process:
        # Complete: the checkpoint's pickles (optimizer, RNG states) go, leaving a folder ready for the Hub.
        shutil.rmtree(last_checkpoint(output_dir), ignore_errors=True)
    return metrics


def training_loop(accelerator: Accelerator, model, optimizer, loader, state: dict,
                  loss_of: Callable[[object], torch.Tensor], *, max_steps: int, output_dir: Path, scheduler=None,
                  max_grad_norm: float = 0.0, skip_nonfinite: bool = False, eval_every: int = 0,
                  evaluate: Callable[[], tuple[dict, str]] | None = None, save_every: int = 0,
                  time_limit: float | None = None, tokens_per_step: int | None = None,
                  on_step: Callable[[int, float], None] | None = None, progress: bool = True) -> list[float]:
    """The optimizer steps of a run, shared by every trainer: from `state` (a new run's or a checkpoint's) to
    `max_steps` or the time limit. Returns this process's wall time of each step it ran (for step_timing).

    `model`, `optimizer`, `loader` and `scheduler` (optional) are prepared by `accelerator`; `loss_of(batch)` is the
    mean loss of one micro-batch, gradient accumulation comes from the accelerator. `state` is updated in place (and
    is what each checkpoint saves): step, batches (micro-batches seen, where a resumed run picks up the data),
    train_seconds (continued across resumes), train_loss (one value per step), eval (`evaluate()`'s record every
    `eval_every` steps, its text printed), skipped_steps and, with `tokens_per_step`, tokens. A non-finite step loss
    stops the run naming the step, or with `skip_nonfinite` leaves the weights unchanged. Checkpoints come every
    `save_every` steps and at the time limit; `on_step(step, loss)` is called after each step's checkpoint.
    """
    if state["step"] >= max_steps:  # a checkpoint of a finished run: nothing is left to train
        return []
    bar = tqdm(total=max_steps, initial=state["step"], desc="training", unit="step",
               disable=not (progress and accelerator.is_local_main_process))
    start, start_step = time.perf_counter(), state["step"]
    seconds_before = state["train_seconds"]
    model.train()
    step_losses, step_seconds, step_start = [], [], start
    for batch in endless_batches(accelerator, loader, state["batches"]):
        with accelerator.accumulate(model):
            loss = loss_of(batch)
            accelerator.backward(loss)
            step_losses.append(loss.detach())
            if accelerator.sync_gradients:
                # Every process sees the same mean, so all of them step, skip or stop together.
                step_loss = accelerator.reduce(torch.stack(step_losses).mean(), reduction="mean").item()
                step_losses = []
                if not math.isfinite(step_loss) and not skip_nonfinite:
                    raise ValueError(
                        f"step {state['step'] + 1}: the training loss is {step_loss} (not finite); "
                        + (f"{last_checkpoint(output_dir).name} is kept for --resume; "
                           if last_checkpoint(output_dir) else "") +
                        "lower --learning_rate or --max_grad_norm, or pass --skip_nonfinite to skip such steps")
                if math.isfinite(step_loss):
                    if max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                    optimizer.step()  # the prepared optimizer and scheduler only step when gradients sync
                else:
                    state["skipped_steps"] = state.get("skipped_steps", 0) + 1
                    tqdm.write(f"step {state['step'] + 1}: training loss {step_loss}, optimizer step skipped "
                               "(--skip_nonfinite)")
            if scheduler is not None:
                scheduler.step()  # the schedule moves on over a skipped step, so the run still ends at max_steps
            optimizer.zero_grad()
        state["batches"] += 1
        if not accelerator.sync_gradients:
            continue
        state["step"] += 1
        state["train_seconds"] = seconds_before + time.perf_counter() - start
        state["train_loss"].append(step_loss)
        step_seconds.append(time.perf_counter() - step_start)
        bar.update()
        if tokens_per_step is None:
            bar.set_postfix(loss=f"{step_loss:.4f}")
        else:
            state["tokens"] += tokens_per_step
            speed = tokens_per_step * (state["step"] - start_step) / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{speed:,.0f}")
        done = state["step"] == max_steps
        if evaluate is not None and eval_every and state["step"] % eval_every == 0 and not done:
            record, text = evaluate()
            model.train()
            state["eval"].append(dict(step=state["step"], **record))
            if accelerator.is_main_process and progress:
                tqdm.write(f"step {state['step']}: {text}")
        out_of_time = time_limit is not None and out_of_time_everywhere(accelerator, start, time_limit)
        if out_of_time or (save_every and state["step"] % save_every == 0 and not done):
            save_checkpoint(accelerator, output_dir, state, model)
        if on_step is not None:
            on_step(state["step"], step_loss)
        if done or out_of_time:
            break
        step_start = time.perf_counter()  # evaluations and checkpoints are not step time
    bar.close()
    if state["step"] < max_steps:
        accelerator.print(f"time limit of {time_limit:g} s reached at step {state['step']} of {max_steps}; "
                          "--resume continues from here")
    return step_seconds


def step_timing(step_seconds: list[float], compiled: bool) -> dict:
    """This process's median step time after the first, and, when compiling, the first step's extra time (the
    compilation)."""
    if len(step_seconds) < 2:
        return dict(step_seconds=None, compile_seconds=None)
    median = statistics.median(step_seconds[1:])
    return dict(step_seconds=round(median, 4),
                compile_seconds=round(step_seconds[0] - median, 2) if compiled else None)


def endless_batches(accelerator: Accelerator, loader, batches_done: int):
    """Micro-batches from where a run that had seen `batches_done` of them stopped, epoch after epoch."""
    epoch, position = divmod(batches_done, len(loader))
    while True:
        loader.set_epoch(epoch)  # the seedable sampler shuffles each epoch with seed + epoch
        yield from accelerator.skip_first_batches(loader, position) if position else loader
        epoch, position = epoch + 1, 0


def out_of_time_everywhere(accelerator: Accelerator, start: float, limit: float) -> bool:
    # Every process must stop at the same step, so they agree on the slowest clock.
    elapsed = torch.tensor(time.perf_counter() - start, device=accelerator.device)
    return accelerator.reduce(elapsed, reduction="max").item() > limit


def save_model(accelerator: Accelerator, model, tokenizer, output_dir: Path, metrics: dict):
    """The Hub-ready folder: weights + modeling code (save_pretrained), tokenizer, model card, loss curve, and
    metrics.json, which also lists every file the run wrote (what --overwrite_output_dir deletes)."""
    accelerator.wait_for_everyone()
    before = file_stamps(output_dir)
    # get_state_dict gathers the full weights where FSDP or DeepSpeed ZeRO-3 shard them (on the main process).
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.FSDP:
        # FSDP2 swaps the model's class for a subclass generated in torch's own module, and save_pretrained would
        # ship torch's files as the remote code: a plain model of the same config takes the gathered weights.
        if accelerator.is_main_process:
            plain = AutoModelForCausalLM.from_config(unwrapped.config)
            plain.load_state_dict(state_dict)
            plain.generation_config = unwrapped.generation_config
            plain.save_pretrained(output_dir)
    else:
        unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                                  save_function=accelerator.save, state_dict=state_dict)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        config = json.loads((output_dir / "config.json").read_text())
        if "auto_map" in config:  # an attnlab member: remote code ships in the folder
            check_folder(output_dir)
            (output_dir / "README.md").write_text(model_card(config, f"your-name/{output_dir.resolve().name}")
                                                  + training_summary(metrics))
        plot_loss_curve(metrics, output_dir / LOSS_CURVE_FILE)
        after = file_stamps(output_dir)
        metrics["files"] = sorted({name for name, stamp in after.items() if before.get(name) != stamp} | {METRICS_FILE})
        (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    accelerator.wait_for_everyone()


def file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_mtime_ns, path.stat().st_size) for path in folder.glob("*") if path.is_file()}


def plot_loss_curve(metrics: dict, path: Path):
    """Training loss per step and the held-out evaluations, in nats per token (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s", path.name)
        return
    figure, axes = plt.subplots(figsize=(7, 4))
    steps = range(1, len(metrics["train_loss"]) + 1)
    axes.plot(steps, metrics["train_loss"], lw=0.8, alpha=0.7, label="training batches")
    evaluations = [*metrics["eval"], dict(step=metrics["steps"], **metrics["final_eval"])]
    axes.plot([e["step"] for e in evaluations], [e["loss"] for e in evaluations], "o-", label="held-out")
    axes.set(xlabel="optimizer step", ylabel="loss (nats per token)",
             title=f"{metrics['model']}: {metrics['parameters']:,} parameters, held-out "
                   f"{metrics['final_eval']['loss']:.3f}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def training_summary(metrics: dict) -> str:
    final = EvalResult(**metrics["final_eval"])
    return (f"\n## Training\n\nTrained with `attnlab train` for {metrics['steps']} steps ({metrics['tokens']:,} tokens, "
            f"{metrics['train_seconds']} s, {metrics['num_processes']} process(es)); {metrics['parameters']:,} "
            f"parameters.\n\nHeld-out: {final}.\n")
