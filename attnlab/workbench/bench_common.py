"""What every `attnlab bench` section shares: models at a shape (hybrids at shallow depth, Llama matched in
parameters), decoding state size, the task training loop of MQAR and copy, and the reports (JSON + markdown) with the
machine, command and commit."""

import json
import math
import os
import shlex
import statistics
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..members import HYBRIDS, MEMBERS, get_member
from ..modeling_common import CACHE_FIELD
from .benchmarking import load_average, machine_description, machine_facts, provenance_fields
from .report import commit_label

BASELINE = "llama"
DEFAULT_MODELS = [*MEMBERS, *HYBRIDS, BASELINE]
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------------
# Models at a shape: hybrids at shallow depth, Llama matched in parameters, decoding state size


def config_values(name: str, values: dict) -> dict:
    """`values`, where a depth-recurrent member gets that many shared blocks, each applied `num_passes` times
    (equal unique parameters)."""
    member = get_member(name)
    layers = values.get("num_hidden_layers")
    if layers and "num_unique_layers" in member.config_class.__dataclass_fields__:
        passes = values.get("num_passes", member.preset_overrides.get("num_passes",
                                                                      member.config_class.num_passes))
        return {**values, "num_passes": passes, "num_unique_layers": layers, "num_hidden_layers": layers * passes}
    return values  # a hybrid's layout at this depth is the registry's rule (Member.build_config)


def build_config(name: str, values: dict):
    member = get_member(name)
    values = config_values(name, values)
    if member.is_baseline:
        return member.config_class(**{**member.preset_overrides, **values})
    return member.build_config(dict(values))


def count_parameters(name: str, values: dict) -> int:
    config = build_config(name, values)
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        model = get_member(name).causal_lm_class(config)
    return sum(p.numel() for p in model.parameters())


def matched_llama_intermediate(values: dict, target: int) -> int:
    """The Llama `intermediate_size` whose parameter count is closest to `target` (the count is linear in it)."""
    base = count_parameters(BASELINE, {**values, "intermediate_size": 1})
    per_unit = count_parameters(BASELINE, {**values, "intermediate_size": 2}) - base
    return max(1, round(1 + (target - base) / per_unit))


def shape_overrides(models: list[str], values: dict, llama_match: str,
                    match_to: list[str] | None = None) -> tuple[dict[str, dict], dict[str, int]]:
    """Per model, the config overrides beyond `values` (Llama's matched width of its MLP), and parameter counts.

    Llama is matched to the mean count of `match_to` where given (models need not be in `models`: a grid split across
    runs or machines keeps one Llama), else of the other compared models."""
    # A hybrid's layout and a depth-recurrent member's blocks depend on the depth; everything else shares `values`.
    named = list(dict.fromkeys([*models, *(match_to or [])]))
    overrides = {name: {k: v for k, v in config_values(name, values).items() if values.get(k, object()) != v}
                 for name in named}
    counts = {name: count_parameters(name, {**values, **overrides[name]}) for name in named}
    others = [counts[name] for name in (match_to or models) if name != BASELINE]
    if BASELINE in models and others and llama_match == "params":
        overrides[BASELINE] = {"intermediate_size": matched_llama_intermediate(values, round(statistics.mean(others)))}
        counts[BASELINE] = count_parameters(BASELINE, {**values, **overrides[BASELINE]})
    return {name: overrides[name] for name in models}, {name: counts[name] for name in models}


def build_model(name: str, values: dict, seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    return get_member(name).causal_lm_class(build_config(name, values)).to(device)


def cache_floats(cache) -> int:
    """Floating-point numbers held by a transformers cache (keys, values, recurrent states). Non-float tensors (the
    one-byte-per-token placeholder keys a pure recurrent stack keeps so that transformers can count its length) are
    not state the model computes with and are left out."""
    total = 0
    for layer in cache.layers:
        for value in vars(layer).values():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                else [value]
            total += sum(t.numel() for t in items if torch.is_tensor(t) and t.is_floating_point())
    return total


@torch.no_grad()
def decoding_state_floats(model, context: int) -> int:
    """Floats a model carries to decode the next token after `context` tokens (batch 1)."""
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(model.parameters()).device)
    return cache_floats(getattr(model(input_ids=ids, use_cache=True), CACHE_FIELD))


def logits_at(model, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the labelled positions only: the head runs on those rows alone, which keeps a large
    vocabulary (MQAR's 8192) cheap when a few positions per sequence are scored."""
    device = next(model.parameters()).device
    input_ids, labels = input_ids.to(device), labels.to(device)
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
    keep = labels != IGNORE_INDEX
    head = getattr(model, "compute_logits", None) or model.lm_head  # attnlab members may add layers on the head
    return head(hidden[keep]), labels[keep]



def _preset_values(preset: str, vocab_size: int) -> dict:
    from ..members import SIZE_PRESETS

    if preset not in SIZE_PRESETS:
        raise ValueError(f"unknown size preset {preset!r}; choose one of {sorted(SIZE_PRESETS)}")
    return dict(SIZE_PRESETS[preset], vocab_size=vocab_size)



# ---------------------------------------------------------------------------------------------------------------
# Reports


def run_info(argv: list[str]) -> dict:
    return dict(command=shlex.join(["attnlab", "bench", *argv]), **provenance_fields(),
                load_average_at_start=os.getloadavg()[0], cpu_count=os.cpu_count(), machine_facts=machine_facts(),
                load_averages_before=load_average())


def write_report(out_dir: Path, name: str, info: dict, settings: dict, data: dict, sections: list[str],
                 quick: bool) -> Path:
    """`name.json` (everything) and `name.md` (the command, machine, date, load, then `sections`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {**info, "load_average_at_end": os.getloadavg()[0], "load_averages_after": load_average(), "quick": quick}
    (out_dir / f"{name}.json").write_text(json.dumps(dict(info=info, settings=settings, **data), indent=1,
                                                     default=str))
    warning = ("**Smoke test (--quick): these numbers are not measurements and must not be reported.**\n\n"
               if quick else "")
    load = max(info["load_average_at_start"], info["load_average_at_end"])
    shared = " Other jobs shared the machine: timings are disturbed." if load > 0.5 * info["cpu_count"] + 1 else ""
    header = (f"```bash\n{info['command']}\n```\n\n{warning}Machine: {info['machine']}, {info['cpu_count']} CPUs; "
              f"{info['date']}; {commit_label(info['git_commit'], info.get('uncommitted_code'))}; load average {info['load_average_at_start']:.1f} at the "
              f"start, {info['load_average_at_end']:.1f} at the end.{shared}")
    (out_dir / f"{name}.md").write_text("\n\n".join([header, *sections]) + "\n")
    return out_dir / f"{name}.md"


def fitted_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (1: linear growth, 2: quadratic); None below 2 usable points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    return float(np.polyfit(*zip(*points), 1)[0])


def fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def save_log_x_plot(figure, axes, path: Path, xlabel: str, ylabel: str, title: str):
    """The suite's one-panel plots: log x axis, labels, the machine under the title, grid, legend; saved and closed."""
    import matplotlib.pyplot as plt

    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(f"{title}\n{machine_description()}", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)



# ---------------------------------------------------------------------------------------------------------------
# Tasks (MQAR, copy): small models trained on labelled positions


def train_task(model, batches, steps: int, lr: float, weight_decay: float = 0.1,
               evaluate=None, eval_every: int = 0, stop_at: float | None = None, desc: str = "training") -> list[dict]:
    """AdamW with cosine decay to zero over `steps`, cross-entropy on labelled positions. `batches` yields (inputs,
    labels); `evaluate()` -> accuracy is called every `eval_every` steps, and training stops early once it exceeds
    `stop_at` (zoology stops at 0.99). A progress bar named `desc` shows the loss and the last accuracy. Returns the
    evaluations as [{step, accuracy}]."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    history = []
    model.train()
    progress = tqdm(total=steps, desc=desc, unit="step", leave=False, mininterval=1.0)
    for step in range(1, steps + 1):
        inputs, labels = next(batches)
        logits, targets = logits_at(model, inputs, labels)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        if not torch.isfinite(loss):
            history.append(dict(step=step, diverged=True))
            break
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update()
        if step % 10 == 0 or step == steps:  # .item() syncs: not every step
            progress.set_postfix(loss=f"{loss.item():.3f}", **({"acc": f"{history[-1]['accuracy']:.3f}"}
                                                              if history else {}), refresh=False)
        if evaluate is not None and eval_every and step % eval_every == 0 and step < steps:
            history.append(dict(step=step, accuracy=evaluate()))
            model.train()
            if stop_at is not None and history[-1]["accuracy"] > stop_at:
                break
    progress.close()
    return history


@torch.no_grad()
def accuracy_on_labels(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Share of labelled positions whose argmax is the label (zoology's accuracy; the copy task's copied half)."""
    model.eval()
    correct = total = 0
    for start in range(0, len(inputs), batch_size):
        logits, targets = logits_at(model, inputs[start:start + batch_size], labels[start:start + batch_size])
        correct += (logits.argmax(-1) == targets).sum().item()
        total += targets.numel()
    return correct / total


def epochs_of(inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    """Shuffled batches of a fixed training set, epoch after epoch (the last partial batch of an epoch dropped)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            yield inputs[index], labels[index]


def task_model_values(args, width: int, vocab_size: int, max_positions: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=args.mlp_ratio * width,
                num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=max_positions)


def add_task_model_arguments(sub, seed: bool = True):
    """The model shape and seed options of the task sections (MQAR, copy)."""
    sub.add_argument("--layers", type=int, default=2)
    sub.add_argument("--heads", type=int, default=2)
    sub.add_argument("--mlp-ratio", type=int, default=2, help="MLP width as a multiple of the model width")
    if seed:
        sub.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    sub.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return sub
