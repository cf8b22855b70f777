"""attnlab command line: train, evaluate, generate, train a tokenizer, and the README's demo.

    attnlab train --model triple_product --preset tiny --max_steps 500     # any option of TrainArgs
    attnlab eval outputs/run                                              # held-out Shakespeare, packed blocks
    attnlab eval outputs/run --window 512 --stride 256                    # sliding window
    attnlab generate outputs/run --prompt "ROMEO:"
    attnlab tokenizer --files a.txt b.txt --vocab_size 4096 --output_dir my-tokenizer
    attnlab demo
    attnlab bench speed --presets tiny small --compile                    # benchmark suite: speed, mqar, copy, lm
"""

import json
import shutil
import time
from pathlib import Path

import datasets
import torch
import transformers
from transformers import HfArgumentParser

from . import bench as benchmark_suite
from .data import load_text_splits, pack_blocks, token_stream
from .evaluation import EvalResult, evaluate_blocks, evaluate_sliding_window, load_model_and_tokenizer
from ..tokenization_attnlab import token_byte_lengths, train_bpe_tokenizer
from .training import TrainArgs, train


def train_command(args):
    train_args = TrainArgs(**{name: getattr(args, name) for name in TrainArgs.__dataclass_fields__})
    metrics = train(train_args)
    print(f"saved the model, its tokenizer and metrics.json to {Path(train_args.output_dir).resolve()}")
    print(f"held-out: {EvalResult(**metrics['final_eval'])}")


def eval_command(args):
    model, tokenizer = load_model_and_tokenizer(args.folder, args.tokenizer)
    # Given --files, score those files; otherwise the held-out split of the default text (Shakespeare's plays).
    splits = load_text_splits(train_files=args.files, validation_files=args.files, dataset_name=args.dataset_name,
                              dataset_config=args.dataset_config, text_column=args.text_column)
    text = splits[args.split]
    byte_lengths = token_byte_lengths(tokenizer)
    if args.window is not None:
        tokens = token_stream(text, tokenizer)[: args.max_tokens]
        result = evaluate_sliding_window(model, tokens, byte_lengths, args.window, args.stride or args.window // 2,
                                         batch_size=args.batch_size)
    else:
        blocks = pack_blocks(text, tokenizer, args.block_size, text_column=args.text_column)
        result = evaluate_blocks(model, blocks, byte_lengths, args.batch_size, max_blocks=args.max_blocks)
    print(result)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result.to_dict(), indent=1))


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, seed: int = 0, **generate_kwargs) -> str:
    torch.manual_seed(seed)
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    output = model.generate(input_ids, max_new_tokens=max_new_tokens, **generate_kwargs)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def generate_command(args):
    model, tokenizer = load_model_and_tokenizer(args.folder, args.tokenizer)
    sampling = {} if args.greedy else dict(do_sample=True, temperature=args.temperature, top_k=args.top_k,
                                           top_p=args.top_p)
    print(generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.seed,
                        repetition_penalty=args.repetition_penalty, **sampling))


def tokenizer_command(args):
    tokenizer = train_bpe_tokenizer(args.files, args.vocab_size, min_frequency=args.min_frequency)
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved a {len(tokenizer)}-token BPE tokenizer to {Path(args.output_dir).resolve()}; "
          f"use it with attnlab train --tokenizer {args.output_dir}")


# The demo's run: triple_product tiny on the embedded Shakespeare, about 3 minutes of training on 2 CPU cores. One
# thread: on a 2-core machine shared with another job, two threads made a step 8x slower (3.4 s instead of 0.43 s).
DEMO_ARGS = dict(model="triple_product", preset="tiny", block_size=256, batch_size=16, max_steps=400,
                 learning_rate=3e-3, eval_every=100, eval_blocks=32, save_every=0, time_limit=240.0, num_threads=1)


def demo_command(args):
    start = time.perf_counter()
    datasets.disable_progress_bars()  # keep the output to the training bar and the results
    transformers.utils.logging.disable_progress_bar()
    output_dir = Path(args.output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)  # the demo's own folder: each run starts afresh
    print(f"Training triple_product (tiny) on Shakespeare with the byte tokenizer; whole plays are held out.")
    metrics = train(TrainArgs(**DEMO_ARGS, output_dir=str(output_dir)))
    final = metrics["final_eval"]
    print(f"\nHeld-out plays ({final['tokens']:,} tokens): loss {final['loss']:.3f} nats/token | "
          f"bits/byte {final['bits_per_byte']:.3f} | next-byte accuracy {final['accuracy']:.1%}")
    model, tokenizer = load_model_and_tokenizer(output_dir)
    sample = generate_text(model, tokenizer, args.prompt, max_new_tokens=300, do_sample=True, temperature=0.8,
                           top_k=40)
    print(f"\nSample (temperature 0.8, top-k 40):\n{sample}\n")
    print(f"Saved a Hub-ready folder (weights, modeling code, tokenizer, model card, metrics.json) to "
          f"{output_dir.resolve()}\nLoad it anywhere, without attnlab installed:\n"
          f"    from transformers import pipeline\n"
          f"    generator = pipeline('text-generation', model='{output_dir}', trust_remote_code=True)\n"
          f"    print(generator('ROMEO:', max_new_tokens=100)[0]['generated_text'])\n"
          f"Demo took {time.perf_counter() - start:.0f} s ({metrics['steps']} training steps, "
          f"{metrics['train_seconds']:.0f} s of training).")


def _add_model_arguments(parser):
    parser.add_argument("folder", help="a folder saved by attnlab train (or any causal LM folder)")
    parser.add_argument("--tokenizer", default=None, help="'bytes' or a tokenizer folder (default: the model folder's)")


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser([], prog="attnlab", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("train", help="train a member or the llama baseline (accelerate launch works too)",
                        dataclass_types=[TrainArgs]).set_defaults(func=train_command)

    evaluate = commands.add_parser("eval", help="loss, perplexity, bits/byte and accuracy of a saved model")
    _add_model_arguments(evaluate)
    evaluate.add_argument("--files", nargs="+", default=None, help="text files to score (default: held-out Shakespeare)")
    evaluate.add_argument("--dataset_name", default=None, help="a datasets Hub dataset instead of files")
    evaluate.add_argument("--dataset_config", default=None, help="the dataset's configuration name")
    evaluate.add_argument("--text_column", default="text", help="the column holding the text")
    evaluate.add_argument("--split", default="validation", help="which split to score: validation or train")
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

    demo = commands.add_parser("demo", help="train triple_product on Shakespeare for ~3 minutes, evaluate on held-out "
                                            "plays, generate, save a Hub-ready folder")
    demo.add_argument("--output_dir", default="outputs/demo", help="the demo's folder (replaced on each run)")
    demo.add_argument("--prompt", default="ROMEO:\n", help="the prompt of the printed sample")
    demo.set_defaults(func=demo_command)

    # The benchmark suite parses its own options (attnlab/workbench/bench.py); '+' as prefix hands it '--help' too.
    bench = commands.add_parser("bench", help="every member, hybrid and Llama side by side: speed, mqar, copy, lm",
                                add_help=False, prefix_chars="+")
    bench.add_argument("bench_args", nargs="...", help="a section and its options (attnlab bench --help)")
    bench.set_defaults(func=lambda args: benchmark_suite.main(args.bench_args))
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: one line naming the problem, not a traceback
        parser.exit(2, f"attnlab {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
