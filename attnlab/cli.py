"""Command-line entry point: `attnlab demo` (the README's main job)."""

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from .members import get_member


def demo(args):
    member = get_member(args.model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(member.preset_config("tiny", vocab_size=259, max_position_embeddings=512))
    prompt = torch.tensor([list(b"ROMEO: ")]) 
    print(model.generate(prompt, max_new_tokens=20, do_sample=False))
    model.save_pretrained(args.output_dir)
    print(f"saved a Hub-ready folder to {Path(args.output_dir).resolve()}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="attnlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="build a tiny member, generate from it and save a Hub-ready folder")
    demo_parser.add_argument("--model", default="triple_product", help="member name")
    demo_parser.add_argument("--output-dir", default="outputs/demo", help="where the Hub-ready folder goes")
    demo_parser.set_defaults(func=demo)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
