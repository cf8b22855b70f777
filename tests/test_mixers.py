"""Mixers as first-class citizens: the registry, heterogeneous stacks, a mixer written outside attnlab (the example
retention, examples/retention) through the whole contract, and what goes wrong with a mixer that is not one."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer, LinearAttentionCacheLayerMixin

import attnlab  # noqa: F401
from attnlab.configuration_mixer_stack import MixerStackConfig
from attnlab.members import HYBRIDS, MEMBERS, get_member, mixer_member
from attnlab.mixers import get_mixer, hybrid_mixer_types, registered_mixers
from attnlab.modeling_mixer_stack import MixerStackForCausalLM
from attnlab.workbench.contract import CHECKS, TINY_STACK, ContractInputs, run_check, run_checks
from attnlab.workbench.contract_tests import MixerContractTests, mixer_models
from tests.conftest import EXAMPLE_MIXER_FOLDER

RETENTION = "retention:Retention"
SMALL_CHUNKS = {"mixer_options": {RETENTION: {"retention_chunk_size": 5}}}


class TestRetentionContract(MixerContractTests):
    """The one-line contract a researcher's repository runs (here on the example, with chunks of 5 so that chunk
    ends are crossed)."""

    mixer = RETENTION
    config_overrides = SMALL_CHUNKS


# The registry ---------------------------------------------------------------------------------------------------


def test_every_member_mixer_and_attention_are_registry_entries_with_their_cache_needs():
    registry = registered_mixers()
    expected = {"attention": ("full_attention", 0), "triple_product": ("full_attention", 0),
                "evolving": ("hybrid", 1), "elita": ("linear_attention", 3), "depth_recurrent": ("full_attention", 0)}
    for name, (kind, states) in expected.items():
        assert (registry[name].cache_kind, registry[name].num_recurrent_states) == (kind, states), name
    for name in MEMBERS:  # each member runs its registry entry's class
        model = MEMBERS[name].causal_lm_class(MEMBERS[name].test_config())
        mixer = model.model.layers[0].self_attn
        assert type(mixer) is registry[name].mixer_class, name


@pytest.mark.parametrize("depth", range(1, 9))
def test_the_hybrid_layout_rule_at_every_depth(depth):
    if depth == 1:
        with pytest.raises(ValueError, match="at least 2 layers"):
            hybrid_mixer_types("elita", depth, 4)
        with pytest.raises(ValueError, match="at least 2 layers"):
            HYBRIDS["elita_attention"].test_config(num_hidden_layers=1)
        return
    types = hybrid_mixer_types("elita", depth, 4)
    assert "attention" in types and "elita" in types
    assert [i for i, t in enumerate(types) if t == "attention"] == (
        [i for i in range(depth) if (i + 1) % 4 == 0] or [depth - 1])
    for name, hybrid in HYBRIDS.items():  # the members' hybrids, the CLI's presets and the benchmarks use the rule
        own = MEMBERS[name.removesuffix("_attention")].config_class.model_type
        assert hybrid.test_config(num_hidden_layers=depth).mixer_types == hybrid_mixer_types(own, depth, 4)
    assert mixer_member(RETENTION, hybrid=True).build_config(
        {**TINY_STACK, "num_hidden_layers": depth}).mixer_types == hybrid_mixer_types(RETENTION, depth, 4)


def test_presets_and_the_benchmark_build_hybrids_with_an_attention_layer():
    from attnlab.workbench import bench_common

    for preset in ("tiny", "small"):
        config = HYBRIDS["elita_attention"].preset_config(preset)
        assert "attention" in config.mixer_types and "full_attention" in config.layer_types
        bench_config = bench_common.build_config("elita_attention", bench_common._preset_values(preset, vocab_size=256))
        assert bench_config.mixer_types == config.mixer_types


# Heterogeneous stacks -------------------------------------------------------------------------------------------


def test_a_heterogeneous_stack_trains_decodes_saves_and_reloads(tmp_path):
    config = MixerStackConfig(**TINY_STACK | dict(num_hidden_layers=4),
                              mixer_types=["elita", "evolving", "triple_product", "attention"])
    assert config.layer_types == ["linear_attention", "hybrid", "full_attention", "full_attention"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert type(model) is MixerStackForCausalLM
    ids = torch.randint(3, 97, (4, 24), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    model.eval()
    cache = DynamicCache(config=model.config)
    greedy = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0, cache=cache)
    kinds = [(isinstance(layer, LinearAttentionCacheLayerMixin), isinstance(layer, DynamicLayer)) for layer in cache.layers]
    assert kinds == [(True, False), (True, True), (False, True), (False, True)]  # recurrent / keys, per slot
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).mixer_types == config.mixer_types
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0), greedy)


def test_assisted_decoding_of_a_user_mixer_equals_greedy_where_it_gives_per_token_states():
    torch.manual_seed(0)
    config = MixerStackConfig(**TINY_STACK, **SMALL_CHUNKS, mixer_types=[RETENTION, RETENTION])
    model = MixerStackForCausalLM(config).eval()
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]])
    greedy = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    lookup = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0, prompt_lookup_num_tokens=3)
    assert torch.equal(lookup, greedy)
    without = MixerStackForCausalLM(MixerStackConfig(**TINY_STACK, mixer_types=[
        "tests.mixers.broken_retention:NoRollbackRetention", "attention"])).eval()
    with pytest.raises(ValueError, match="stateful"):  # it keeps a state and gives no per-token states
        without.generate(prompt, max_new_tokens=3, pad_token_id=0, prompt_lookup_num_tokens=3)


def test_mixer_options_reach_each_mixer_and_are_checked():
    config = MixerStackConfig(**TINY_STACK, mixer_types=["elita", "evolving"],
                              mixer_options={"elita": {"position_width": 5}, "evolving": {"memory_decay": 0.5}})
    model = MixerStackForCausalLM(config)
    assert model.model.layers[0].self_attn.position_frequency.shape[-1] == 5
    assert model.model.layers[1].self_attn.initial_decay == 0.5
    with pytest.raises(ValueError, match="elita has no option"):
        MixerStackConfig(**TINY_STACK, mixer_types=["elita", "attention"], mixer_options={"elita": {"width": 5}})
    with pytest.raises(ValueError, match="which no layer runs"):
        MixerStackConfig(**TINY_STACK, mixer_types=["elita", "attention"], mixer_options={"evolving": {}})
    with pytest.raises(ValueError, match="mixer_types is required"):
        MixerStackConfig(**TINY_STACK)
    user = MixerStackForCausalLM(MixerStackConfig(**TINY_STACK, **SMALL_CHUNKS, mixer_types=[RETENTION, "attention"]))
    assert user.model.layers[0].self_attn.chunk_size == 5


def test_a_mixer_pattern_repeats_to_fill_the_depth_on_the_command_line():
    member = get_member("stack_mixed")
    assert member.build_config({**TINY_STACK, "num_hidden_layers": 4, "mixer_types": ["elita", "attention"]}
                               ).mixer_types == ["elita", "attention", "elita", "attention"]


# The example mixer, broken copies and bad mixers ------------------------------------------------------------------


def failed_checks(mixer: str) -> dict[str, set]:
    return {kind: {r.check for r in run_checks(make()) if r.status == "FAIL"}
            for kind, make in mixer_models(mixer).items()}


def test_a_mixer_that_leaks_the_next_token_fails_the_causality_checks():
    for kind, failed in failed_checks("tests.mixers.broken_retention:NextTokenLeakRetention").items():
        assert {"causal: next token alone changed", "causal: future tokens changed"} <= failed, kind
        assert "training: every parameter gets a gradient" not in failed


def test_a_mixer_with_a_wrong_decoding_state_fails_the_cache_checks_only():
    for kind, failed in failed_checks("tests.mixers.broken_retention:StaleStateRetention").items():
        assert {"cache: prefill + 1-token decoding", "cache: prefill in chunks of 2, then decoding",
                "left padding: batch of rows 24 and 3 long, decoding"} <= failed, kind
        assert not any(name.startswith("causal") for name in failed), failed


@pytest.mark.parametrize("path, message", [
    ("no_such_module:Mixer", "cannot import module 'no_such_module'"),
    ("retention:NoSuchClass", "has no attribute 'NoSuchClass'"),
    ("retention", "unknown mixer"),
    ("tests.mixers.broken_retention:NoCacheDeclared", "declares no cache"),
    ("tests.mixers.broken_retention:WrongConstructor", r"constructor must take \(config, layer_idx\)"),
    ("retention:retention_chunkwise", "not an nn.Module subclass"),
])
def test_a_path_that_is_not_a_mixer_is_one_clear_error(path, message):
    with pytest.raises(ValueError, match=message):
        MixerStackConfig(**TINY_STACK, mixer_types=[path, "attention"])


class StatelessMixer(torch.nn.Module):
    """A causal mean of the values: no decoding state declared (cache_kind = None)."""

    cache_kind = None

    def __init__(self, config, layer_idx):
        super().__init__()
        self.proj = torch.nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, **kwargs):
        counts = torch.arange(1, hidden_states.shape[1] + 1, device=hidden_states.device)[None, :, None]
        return self.proj(hidden_states.cumsum(1) / counts)


def test_a_mixer_without_a_cache_trains_and_generates_by_recomputation_only():
    model = MixerStackForCausalLM(MixerStackConfig(**TINY_STACK, mixer_types=[f"{__name__}:StatelessMixer"] * 2))
    ids = torch.randint(3, 97, (2, 10))
    assert model.config.use_cache is False and torch.isfinite(model(ids, labels=ids).loss)
    with pytest.raises(ValueError, match=r"declare no decoding state.*use_cache=False"):
        model.generate(ids, max_new_tokens=3, use_cache=True, pad_token_id=0)
    assert model.generate(ids, max_new_tokens=3, use_cache=False, do_sample=False, pad_token_id=0).shape == (2, 13)
    results = {r.check: r.status for r in run_checks(model.eval())}
    assert results["cache: prefill + 1-token decoding"] == "SKIP" and results["causal: future tokens changed"] == "PASS"


# Saving a user's mixer into a folder -------------------------------------------------------------------------------


def test_a_user_mixer_folder_loads_with_pipeline_where_neither_attnlab_nor_the_mixer_is_importable(tmp_path):
    from attnlab.tokenization_attnlab import byte_tokenizer

    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    config = mixer_member(RETENTION, hybrid=True).build_config(
        {**TINY_STACK, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
         "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id})
    model = MixerStackForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "folder")
    tokenizer.save_pretrained(tmp_path / "folder")
    folder_files = set(os.listdir(tmp_path / "folder"))
    assert {"mixer_retention.py", "stack_user_mixers.py", "modeling_mixer_stack.py"} <= folder_files
    source = (tmp_path / "folder" / "mixer_retention.py").read_text()
    assert "from .modeling_common import" in source and "from attnlab" not in source
    expected = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, do_sample=False)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["attnlab"] = None
        sys.modules["retention"] = None
        from transformers import pipeline
        generator = pipeline("text-generation", model={str(tmp_path / 'folder')!r}, trust_remote_code=True)
        out = generator.model.generate(__import__("torch").tensor([[5, 6, 7]]), max_new_tokens=5, do_sample=False)
        print(out.tolist())
        print(generator("ab", max_new_tokens=3, do_sample=False)[0]["generated_text"][:2])
    """)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == str(expected.tolist()) and result.stdout.splitlines()[1] == "ab"


@pytest.mark.parametrize("name, body, message", [
    ("pkg_relative", "from .helpers import f", "relative import"),
    ("pkg_own", "import pkg_own.helpers", "another module of its own package"),
    ("pkg_missing", "import not_an_installed_package_xyz", "not an installed package"),
    ("pkg_workbench", "from attnlab.workbench.data import shakespeare_text", "model library only"),
])
def test_a_mixer_module_that_cannot_travel_is_refused_at_save_time(tmp_path, monkeypatch, name, body, message):
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def f():\n    return 1\n")
    retention_source = (EXAMPLE_MIXER_FOLDER / "retention.py").read_text()
    (package / "mixers.py").write_text(retention_source.replace("import torch\n", "import torch\n" + (
        "try:\n    " + body + "\nexcept ImportError:\n    pass\n"), 1))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = MixerStackForCausalLM(MixerStackConfig(**TINY_STACK, mixer_types=[f"{name}.mixers:Retention"] * 2))
    with pytest.raises(ValueError, match=message):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_audit_command_on_a_user_mixer(capsys):
    from attnlab.workbench.cli import main as cli_main

    with pytest.raises(SystemExit) as exit:
        cli_main(["audit", "--mixer", "tests.mixers.broken_retention:NextTokenLeakRetention", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert exit.value.code == 1 and not report["passed"]
    assert [m["model"].rsplit(" ", 1)[-1] for m in report["models"]] == ["(stack)", "(hybrid)"]
    statuses = {c["check"]: c["status"] for c in report["models"][0]["checks"]}
    assert statuses["causal: next token alone changed"] == "FAIL"
    with pytest.raises(SystemExit) as exit:
        cli_main(["audit", "--mixer", "no_such_module:Mixer"])
    assert exit.value.code == 2 and "cannot import module" in capsys.readouterr().err
