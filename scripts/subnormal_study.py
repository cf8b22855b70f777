"""Why evolving's attention probabilities are subnormal: q, k magnitudes, score ranges, subnormal counts and training
step time with subnormals kept and flushed, evolving (with and without qk_norm) against Llama, at init and after a
short training run. Writes results/subnormals-study.{json,md}.

    OMP_NUM_THREADS=1 python scripts/subnormal_study.py --train-steps 150
"""

import argparse
import shlex
import sys
from pathlib import Path

import torch

from attnlab.workbench.bench_common import _preset_values, build_model, run_info, shape_overrides, write_report
from attnlab.workbench.bench_subnormal import flush_timing, shakespeare_batches, short_training
from attnlab.workbench.benchmarking import markdown_table
from attnlab.workbench.subnormals import count_attention_subnormals, flush_denormal
from attnlab.modeling_evolving import evolve, EvolvingAttention
from attnlab.modeling_common import split_heads


def rms(t):
    return float(t.float().square().mean().sqrt())


@torch.no_grad()
def magnitudes(model, ids):
    """Per layer: RMS of the projected q, k; for evolving also of w, q~, k~ (what SDPA sees)."""
    rows, captured = [], []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, a, kw: captured.append((m, a, kw)), with_kwargs=True)
             for layer in model.model.layers]
    model.eval()
    model(input_ids=ids, use_cache=False)
    for hook in hooks:
        hook.remove()
    for index, (mixer, args, kwargs) in enumerate(captured):
        hidden = args[0] if args else kwargs["hidden_states"]
        evolving = isinstance(mixer, EvolvingAttention)
        q = split_heads(mixer.q_proj(hidden), mixer.num_heads if evolving else mixer.config.num_attention_heads)
        k = split_heads(mixer.k_proj(hidden), mixer.num_heads if evolving else mixer.config.num_key_value_heads)
        row = dict(layer=index, q=rms(q), k=rms(k))
        if evolving:
            position_ids = kwargs["position_ids"]
            w = mixer.temporal_weights(position_ids)
            q_evolved, k_evolved = evolve(q.float(), k.float(), w, mixer.decay(), None, mixer.scan_chunk_size)
            row.update(w=rms(w), q_evolved=rms(q_evolved), k_evolved=rms(k_evolved), decay=float(mixer.decay()),
                       evolution_weights=rms(mixer.evolution_weights))
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--timed-lengths", type=int, nargs="*", default=[1024])
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--train-length", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-dir", default="results")
    parser.add_argument("--variants", nargs="+", default=["evolving", "evolving qk_norm", "llama"])
    parser.add_argument("--name", default="subnormals-study")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = run_info(["(scripts/subnormal_study.py)", *sys.argv[1:]])
    info["command"] = "OMP_NUM_THREADS=1 python scripts/subnormal_study.py " + shlex.join(sys.argv[1:])
    values = dict(_preset_values(args.preset, 256), max_position_embeddings=max(*args.lengths, args.train_length))
    variants = {"evolving": ("evolving", {}), "evolving qk_norm": ("evolving", {"qk_norm": True}),
                "llama": ("llama", {})}
    overrides, _ = shape_overrides(["evolving", "llama"], values, "params")
    records, rows, mag_rows = [], [], []
    for label, (name, extra) in ((label, variants[label]) for label in args.variants):
        model = build_model(name, {**values, **overrides[name], **extra}, seed=0)
        losses = []
        for stage in ("init", "trained"):
            if stage == "trained":
                losses = short_training(model, args.train_steps, args.train_batch, args.train_length)
            mags = magnitudes(model, next(shakespeare_batches(1, min(1024, max(args.lengths)), seed=2)))
            for row in mags:
                mag_rows.append([label, stage, row["layer"]] + [f"{row.get(key, float('nan')):.2f}" for key in
                                 ("q", "k", "w", "q_evolved", "k_evolved", "evolution_weights", "decay")])
            for length in args.lengths:
                ids = next(shakespeare_batches(1, length, seed=1))
                with flush_denormal(False):
                    counts = count_attention_subnormals(model, ids).as_dict()
                with flush_denormal(True):
                    flushed = count_attention_subnormals(model, ids).as_dict()
                timing = flush_timing(model, ids, args.rounds, 1) if length in args.timed_lengths else None
                records.append(dict(model=label, stage=stage, seq_len=length, counts=counts, counts_flushed=flushed,
                                    timing=timing,
                                    magnitudes=mags, final_loss=losses[-1] if losses else None))
                rows.append([label, stage, length, f"{max(counts['log_score_range']):.0f}",
                             f"{counts['subnormal_probabilities']:,}", f"{counts['probability_fraction']:.2e}",
                             f"{counts['subnormal_score_gradients']:,}", f"{counts['score_gradient_fraction']:.2e}",
                             f"{counts['subnormal_input_gradients']:,}",
                             f"{counts['computed_subnormal_probabilities']:,} / "
                             f"{counts['computed_subnormal_score_gradients']:,}",
                             f"{flushed['computed_subnormal_probabilities']:,} / "
                             f"{flushed['computed_subnormal_score_gradients']:,}",
                             f"{timing['kept_s'] * 1e3:.0f} / {timing['flushed_s'] * 1e3:.0f}" if timing else "-",
                             f"{losses[-1]:.2f}" if losses else "-"])
                print(rows[-1], flush=True)
    sections = [
        f"Preset `{args.preset}` (width {values['hidden_size']}, {values['num_hidden_layers']} layers, "
        f"{values['num_attention_heads']} heads), fp32, batch 1, one thread. `trained`: {args.train_steps} AdamW steps "
        f"(lr 3e-3) at T = {args.train_length}, batch {args.train_batch}, on Shakespeare bytes.",
        "Magnitudes (RMS over batch, heads, positions and channels, T = 1024): q, k as projected; w the sine term; "
        "q~, k~ the evolved query and key SDPA sees (evolving without qk_norm; with qk_norm SDPA sees their "
        "RMS-normalised versions).",
        markdown_table(["model", "stage", "layer", "q", "k", "w", "q~", "k~", "rms evolution_weights", "decay"],
                       mag_rows),
        "Subnormal counts (max score range: the largest max - min of q.k/sqrt(d) over a row's allowed keys; a "
        "probability is subnormal when its score is 87-103 below its row's max; counted in log space, whatever the "
        "flush setting). Computed: the subnormal values among P and dS as fp32 arithmetic produces them, with "
        "subnormals kept and with them flushed (torch.set_flush_denormal(True)). Step ms: forward + backward with "
        "subnormals kept / flushed.",
        markdown_table(["model", "stage", "T", "max score range", "subnormal P", "fraction", "subnormal dS",
                        "fraction", "subnormal dq,dk,dv",
                        "computed P / dS, kept", "computed P / dS, flushed", "step ms kept / flushed", "final train loss"], rows),
    ]
    write_report(Path(args.output_dir), args.name, info, vars(args), dict(records=records), sections,
                 quick=False)


if __name__ == "__main__":
    main()
