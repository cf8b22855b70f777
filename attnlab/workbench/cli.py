"""attnlab command line: train, evaluate, generate, train a tokenizer, publish, audit, and the README's demo.

    attnlab train --model triple_product --preset tiny --max_steps 500     # any option of TrainArgs
    attnlab train --init_from outputs/run --train_files mine.txt ...      # continue / fine-tune a saved model
    attnlab eval outputs/run                                              # held-out Shakespeare, packed blocks
    attnlab eval outputs/run --window 512 --stride 256                    # sliding window
    attnlab generate outputs/run --prompt "ROMEO:"
    attnlab tokenizer --files a.txt b.txt --vocab_size 4096 --output_dir my-tokenizer
    attnlab push outputs/run your-name/my-model                           # check, write the card, upload
    attnlab audit outputs/run                                             # the contract, PASS/FAIL per check (--json)
    attnlab new-mixer gated_decay --output_dir my_mixer                   # a mixer to start from, its test, a README
    attnlab audit --mixer gated_decay:GatedDecayMixer                     # a mixer by import path: stack and hybrid
    attnlab train --mixer gated_decay:GatedDecayMixer+attention --preset tiny
    attnlab demo
    attnlab bench speed --presets tiny small --compile                    # benchmark suite: speed, mqar, copy, lm
    attnlab train --model vqlnmlp --csv_file series.csv --column value     # time series: see timeseries.py
    attnlab forecast outputs/vq --horizon 96
    attnlab export outputs/run --format onnx --output run.onnx          # checked against eager at two lengths
    attnlab report                                                        # README/docs figures from results/

Bad input (a wrong option value, a missing or corrupt file, an unreachable Hub) ends with one line naming the
problem, never a traceback.
"""

import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import PartialState
from transformers import AutoModelForCausalLM, HfArgumentParser

from . import audit
from . import bench as benchmark_suite
from .data import load_text_splits, pack_blocks, token_stream
from .evaluation import (EvalResult, NonFiniteLossError, evaluate_blocks, evaluate_sliding_window,
                         load_model_and_tokenizer)
from . import export, report, scaffold, timeseries
from .hub import CHECKPOINT_PREFIX, publish
from ..tokenization_attnlab import byte_tokenizer, token_byte_lengths, train_bpe_tokenizer
from .training import METRICS_FILE, TrainArgs, build_config, train

logger = logging.getLogger(__name__)


def train_command(args):
    train_args = TrainArgs(**{name: getattr(args, name) for name in TrainArgs.__dataclass_fields__})
    metrics = train(train_args)
    if PartialState().is_main_process:  # under accelerate launch every process returns the same metrics
        print(f"saved the model, its tokenizer and metrics.json to {Path(train_args.output_dir).resolve()}")
        print(f"held-out: {EvalResult(**metrics['final_eval'])}")


def set_threads(args):
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise ValueError(f"--num_threads must be >= 1, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)


def eval_command(args):
    set_threads(args)
    model, tokenizer = load_model_and_tokenizer(args.folder, args.tokenizer, args.trust_remote_code)
    # Given --files, score those files; otherwise the held-out split of the default text (Shakespeare's plays).
    splits = load_text_splits(train_files=args.files, validation_files=args.files, dataset_name=args.dataset_name,
                              dataset_config=args.dataset_config, text_column=args.text_column)
    text = splits[args.split]
    byte_lengths = token_byte_lengths(tokenizer)
    try:
        if args.window is not None:
            tokens = token_stream(text, tokenizer)[: args.max_tokens]
            result = evaluate_sliding_window(model, tokens, byte_lengths, args.window,
                                             args.stride or args.window // 2, batch_size=args.batch_size)
        else:
            blocks = pack_blocks(text, tokenizer, args.block_size, text_column=args.text_column, split=args.split)
            result = evaluate_blocks(model, blocks, byte_lengths, args.batch_size, max_blocks=args.max_blocks)
    except NonFiniteLossError as error:
        raise ValueError(f"evaluating {args.folder}: {error}") from None
    print(result)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result.to_dict(), indent=1))


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, seed: int = 0, **generate_kwargs) -> str:
    """The prompt and its continuation. An empty prompt starts from bos (as the pipeline does); a length past the
    model's max_position_embeddings is cut to fit, with a warning, before anything is generated."""
    torch.manual_seed(seed)
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if input_ids.shape[1] == 0:
        if tokenizer.bos_token_id is None:
            raise ValueError("the prompt is empty and the tokenizer has no bos token to start from; pass --prompt")
        input_ids = torch.tensor([[tokenizer.bos_token_id]])
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        if input_ids.shape[1] >= limit:
            raise ValueError(f"the prompt has {input_ids.shape[1]} tokens, the model's max_position_embeddings "
                             f"({limit}) leaves no room to generate; shorten the prompt")
        fitting = limit - input_ids.shape[1]
        logger.warning("generating %d tokens instead of %d: the prompt's %d tokens and the new ones must fit in the "
                       "model's max_position_embeddings (%d)", fitting, max_new_tokens, input_ids.shape[1], limit)
        max_new_tokens = fitting
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                            **generate_kwargs)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def generate_command(args):
    set_threads(args)
    model, tokenizer = load_model_and_tokenizer(args.folder, args.tokenizer, args.trust_remote_code)
    sampling = {} if args.greedy else dict(do_sample=True, temperature=args.temperature, top_k=args.top_k,
                                           top_p=args.top_p)
    print(generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.seed,
                        repetition_penalty=args.repetition_penalty, **sampling))


def push_command(args):
    url = publish(args.folder, args.repo_id, private=args.private, revision=args.revision)
    print(f"uploaded {Path(args.folder).resolve()} to {args.repo_id}: {url}")


def tokenizer_command(args):
    tokenizer = train_bpe_tokenizer(args.files, args.vocab_size, min_frequency=args.min_frequency)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved a {len(tokenizer)}-token BPE tokenizer to {Path(args.output_dir).resolve()}; "
          f"use it with attnlab train --tokenizer {args.output_dir}")


# The demo's run, chosen from measurements (docs/notes/firsthour.md): evolving, the member that learned fastest per
# second here, at width 128 and 4 layers (1.08M parameters), on blocks of 256 bytes, since its sine position terms
# do not carry past the trained length and the sample is 240 bytes. 400 steps of 4,096 tokens at a peak learning
# rate of 4e-3 reach about 1.86 nats/byte held-out. One thread: on a 2-core machine shared with other jobs, two
# threads made a step several times slower. The number of threads is measured at the start (measure_threads). The
# steps are fixed, not fitted to a measured speed: a planning step measured while other jobs briefly loaded the
# machine cut a run to 147 steps (held-out 2.35) that then trained at twice the measured speed. The time limit is a
# backstop: the 400 steps took 199 s on an idle 2-core VM (load 1.4), 304 s at load 5-7 and about 404 s at load 7-9,
# where a 420 s limit nearly cut them short; 900 s stops only a machine several times slower than a loaded one
# (training then ends early in the schedule, and the demo says so).
DEMO_ARGS = dict(model="evolving", preset="tiny", block_size=256, batch_size=16, max_steps=400, learning_rate=4e-3,
                 config_overrides=["hidden_size=128", "intermediate_size=512", "num_hidden_layers=4",
                                   "num_attention_heads=4"],
                 eval_every=100, eval_blocks=32, save_every=0, time_limit=900.0)
DEMO_SAMPLE_TOKENS = 240  # with the prompt, within the 256 positions the demo model trains on


def demo_command(args):
    start = time.perf_counter()
    datasets.disable_progress_bars()  # keep the output to the training bar and the results
    transformers.utils.logging.disable_progress_bar()
    output_dir = Path(args.output_dir)
    earlier_demo = check_demo_folder(output_dir)
    demo = TrainArgs(**DEMO_ARGS, output_dir=str(output_dir), overwrite_output_dir=earlier_demo)
    threads, step_seconds = measure_threads(demo)
    print(f"Training {demo.model} on Shakespeare with the byte tokenizer on {threads} thread(s) (a step took "
          f"{step_seconds:.2f} s); whole plays are held out.")
    metrics = train(replace(demo, num_threads=threads))
    for checkpoint in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):  # a time-limited run's: the demo is not resumed
        shutil.rmtree(checkpoint)
    if metrics["steps"] < demo.max_steps:
        print(f"(the time limit stopped training at step {metrics['steps']} of {demo.max_steps}: this machine is far "
              f"slower or busier than the one the demo was sized on, so the held-out loss is higher)")
    final = metrics["final_eval"]
    print(f"\nHeld-out plays ({final['tokens']:,} tokens): loss {final['loss']:.3f} nats/byte | "
          f"bits/byte {final['bits_per_byte']:.3f} | next-byte accuracy {final['accuracy']:.1%}")
    model, tokenizer = load_model_and_tokenizer(output_dir)
    sample = generate_text(model, tokenizer, args.prompt, max_new_tokens=DEMO_SAMPLE_TOKENS, do_sample=True,
                           temperature=0.8, top_k=40)
    known = real_word_share(sample[len(args.prompt):])
    print(f"\nSample (temperature 0.8, top-k 40; {known:.0%} of its words occur in the training plays):\n{sample}\n")
    # The sample, and the mark that makes the folder the demo's own (which the next demo may replace).
    metrics.update(demo=True, sample=sample, sample_real_word_share=known)
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    print(f"Saved a Hub-ready folder (weights, modeling code, tokenizer, model card, metrics.json, loss_curve.png) "
          f"to {output_dir.resolve()}\nLoad it anywhere, without attnlab installed:\n"
          f"    from transformers import pipeline\n"
          f"    generator = pipeline('text-generation', model='{output_dir}', trust_remote_code=True)\n"
          f"    print(generator('ROMEO:', max_new_tokens=100)[0]['generated_text'])\n"
          f"Demo took {time.perf_counter() - start:.0f} s ({metrics['steps']} training steps, "
          f"{metrics['train_seconds']:.0f} s of training).")


def measure_threads(args: TrainArgs) -> tuple[int, float]:
    """1 or 2 threads, whichever trains the demo's model faster right now, and its seconds per step (timed on a
    throwaway copy after a warm-up step).

    On an idle 2-core machine two threads are faster; on one shared with other jobs a step with two threads was
    several times slower than with one. Which holds is only known by measuring.
    """
    tokenizer = byte_tokenizer()
    config = build_config(args.model, args.preset, tokenizer, args.block_size, args.config_overrides)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    ids = torch.randint(0, 256, (args.batch_size, args.block_size), generator=torch.Generator().manual_seed(0))

    def step_seconds() -> float:
        start = time.perf_counter()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        step_seconds()  # warm-up
        seconds = {1: step_seconds()}
        if len(os.sched_getaffinity(0)) >= 2:
            torch.set_num_threads(2)
            first = step_seconds()
            # Far slower already (a busy machine): no second step; else the better of the two, warm-up included.
            seconds[2] = first if first > 2 * seconds[1] else min(first, step_seconds())
    finally:
        torch.set_num_threads(before)
    threads = min(seconds, key=seconds.get)
    return threads, seconds[threads]


def real_word_share(text: str) -> float:
    """The share of the words of `text` that occur in the training plays (a rough "real words" score)."""
    words = re.findall(r"[a-z']+", text.lower())
    if not words:
        return 0.0
    vocabulary = set(re.findall(r"[a-z']+", " ".join(load_text_splits()["train"]["text"]).lower()))
    return sum(word in vocabulary for word in words) / len(words)


def check_demo_folder(output_dir: Path) -> bool:
    """Whether `output_dir` holds an earlier demo's output (which the demo replaces); refuses any other non-empty
    folder, which the demo must not touch."""
    if not output_dir.exists() or (output_dir.is_dir() and not any(output_dir.iterdir())):
        return False
    try:
        if json.loads((output_dir / METRICS_FILE).read_text()).get("demo") is True:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    raise ValueError(f"--output_dir {output_dir} is not empty and is not an earlier demo's output; the demo replaces "
                     f"its folder, so choose an empty or new --output_dir")


def _add_model_arguments(parser):
    parser.add_argument("folder", help="a folder saved by attnlab train (or any causal LM folder or Hub model)")
    parser.add_argument("--tokenizer", default=None, help="'bytes' or a tokenizer folder (default: the model folder's)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="run the modeling code a folder of another library's model ships (attnlab's own members "
                             "need no remote code)")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="CPU threads (default: torch's choice, one per core); 1 is much faster for small models "
                             "when other jobs share the cores")


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser([], prog="attnlab", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("train", help="train a member or the llama baseline (accelerate launch works too); "
                                      "--model vqlnmlp trains the time-series member (its options: attnlab train "
                                      "--model vqlnmlp --help)",
                        dataclass_types=[TrainArgs]).set_defaults(func=train_command)

    evaluate = commands.add_parser("eval", help="loss, perplexity, bits/byte and accuracy of a saved model")
    _add_model_arguments(evaluate)
    evaluate.add_argument("--files", nargs="+", default=None, help="text files to score (default: held-out Shakespeare)")
    evaluate.add_argument("--dataset_name", default=None, help="a datasets Hub dataset instead of files")
    evaluate.add_argument("--dataset_config", default=None, help="the dataset's configuration name")
    evaluate.add_argument("--text_column", default="text", help="the column holding the text")
    evaluate.add_argument("--split", default="validation", choices=["validation", "train"], help="which split to score")
    evaluate.add_argument("--block_size", type=int, default=256, help="tokens per packed block")
    evaluate.add_argument("--max_blocks", type=int, default=None, help="score only the first N blocks")
    evaluate.add_argument("--window", type=int, default=None, help="sliding-window evaluation with this window")
    evaluate.add_argument("--stride", type=int, default=None,
                          help="tokens scored per window after the first (default: window // 2)")
    evaluate.add_argument("--max_tokens", type=int, default=None, help="sliding window: score only the first N tokens")
    evaluate.add_argument("--batch_size", type=int, default=8, help="sequences per forward pass")
    evaluate.add_argument("--output_json", default=None, help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=eval_command)

    generate = commands.add_parser("generate", help="continue a prompt with a saved model")
    _add_model_arguments(generate)
    generate.add_argument("--prompt", default="ROMEO:", help="the text to continue")
    generate.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate")
    generate.add_argument("--greedy", action="store_true", help="greedy decoding (ignores the sampling options)")
    generate.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    generate.add_argument("--top_k", type=int, default=40, help="sample among the k most likely tokens (0: all)")
    generate.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling threshold")
    generate.add_argument("--repetition_penalty", type=float, default=1.0, help="generate()'s repetition penalty")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed")
    generate.set_defaults(func=generate_command)

    tokenizer = commands.add_parser("tokenizer", help="train a byte-level BPE tokenizer on text files and save it")
    tokenizer.add_argument("--files", nargs="+", required=True, help="text files to learn the merges from")
    tokenizer.add_argument("--vocab_size", type=int, default=4096, help="vocabulary size, special tokens included")
    tokenizer.add_argument("--min_frequency", type=int, default=2, help="minimum count of a merged pair")
    tokenizer.add_argument("--output_dir", required=True, help="where to save the tokenizer")
    tokenizer.set_defaults(func=tokenizer_command)

    timeseries.add_forecast_command(commands)
    export.add_command(commands)

    push = commands.add_parser("push", help="check a saved folder loads as remote code and upload it to the Hub")
    push.add_argument("folder", help="a folder saved by attnlab train or save_pretrained")
    push.add_argument("repo_id", help="the Hub repository, owner/name (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", default=None, help="upload to this branch (created if missing) instead of main")
    push.set_defaults(func=push_command)

    scaffold.add_command(commands)

    audit_parser = commands.add_parser("audit", help="check a model (or --mixer) against the contract of DESIGN.md")
    audit.add_arguments(audit_parser)
    audit_parser.set_defaults(func=audit.run)

    demo = commands.add_parser("demo", help="train evolving on Shakespeare (about 4 minutes on an idle 2-core machine, "
                                            "6-10 when other jobs share it), evaluate on held-out plays, generate, "
                                            "save a Hub-ready folder with its loss curve")
    demo.add_argument("--output_dir", default="outputs/demo",
                      help="the demo's folder: new, empty, or an earlier demo's (which is replaced)")
    demo.add_argument("--prompt", default="ROMEO:\n", help="the prompt of the printed sample")
    demo.set_defaults(func=demo_command)

    # The benchmark suite parses its own options (attnlab/workbench/bench.py); '+' as prefix hands it '--help' too.
    bench = commands.add_parser("bench", help="every member, hybrid and Llama side by side: speed, mqar, copy, lm",
                                add_help=False, prefix_chars="+")
    bench.add_argument("bench_args", nargs="...", help="a section and its options (attnlab bench --help)")
    bench.set_defaults(func=lambda args: benchmark_suite.main(args.bench_args))

    report_parser = commands.add_parser("report", help="render the README's and the docs' figures from the records "
                                                       "under results/ (--check: fail if a page is stale)",
                                        add_help=False, prefix_chars="+")
    report_parser.add_argument("report_args", nargs="...", help="options (attnlab report --help)")
    report_parser.set_defaults(func=lambda args: sys.exit(report.main(args.report_args)))
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if timeseries.is_time_series_command(argv):  # train --model vqlnmlp, eval of a vqlnmlp folder
        return timeseries.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: one line naming the problem, not a traceback
        parser.exit(2, f"attnlab {args.command}: error: {' '.join(str(error).split())}\n")


if __name__ == "__main__":
    main()
