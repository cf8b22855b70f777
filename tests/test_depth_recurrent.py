"""depth_recurrent against the submission's forward pass (seed 002), its causal state carry, what its techniques
really compute, its training losses, Muon and the int8 artifact. The generic contracts are in test_contract.py."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from attnlab import DepthRecurrentConfig, DepthRecurrentForCausalLM
from attnlab.workbench.audit import future_perturbation_gap
from attnlab.workbench.data import shakespeare_text
from attnlab.workbench.evaluation import evaluate_sliding_window
from attnlab.workbench.muon import MuonWithAdamW, split_parameters, warmup_then_warmdown
from attnlab.workbench.quantization import load_quantized, quantize_state_dict, save_quantized
from attnlab.workbench.seed_reference.seed_002_depth_recurrent import SeedDepthRecurrentGPT
from attnlab.workbench.training import TrainArgs, train

VOCAB, WIDTH, HEADS, KV_HEADS = 61, 32, 4, 2


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(**overrides) -> DepthRecurrentConfig:
    values = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, num_unique_layers=3, num_passes=3, key_projection_rank=8,
                  technique_rank=4, max_position_embeddings=128)
    return DepthRecurrentConfig(**{**values, **overrides})


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its initial value, so zero-initialised branches and neutral controls all matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def ids(batch=2, length=20, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


class SeedAsCausalLM(torch.nn.Module):
    """The seed module behind the `model(input_ids=..., use_cache=...).logits` interface of the audit functions."""

    def __init__(self, seed_model):
        super().__init__()
        self.seed_model = seed_model

    def forward(self, input_ids, use_cache=False, **kwargs):
        return type("Output", (), {"logits": self.seed_model(input_ids)})


def seed_and_ours(state_carry: bool):
    """The seed module with random weights and our model holding the same weights.

    The seed rotates (x1, x2) by -angle, ours (Llama's convention) by +angle. Negating the second half of every head's
    query and key channels maps one onto the other: R(-a) x = P R(a) P x with P that sign flip, and P is orthogonal and
    diagonal, so it commutes with the per-head RMS norm and gain and leaves q . k unchanged.
    """
    torch.manual_seed(0)
    seed = SeedDepthRecurrentGPT(vocab_size=VOCAB, dim=WIDTH, num_heads=HEADS, num_kv_heads=KV_HEADS, mlp_mult=2,
                                 num_unique_layers=3, num_passes=3, k_rank=8, lowrank=4,
                                 use_selective_state=state_carry)
    randomised(seed)
    ours = DepthRecurrentForCausalLM(config(state_carry=state_carry)).eval()
    head_dim = WIDTH // HEADS
    flip = torch.ones(head_dim)
    flip[head_dim // 2:] = -1

    def flipped(weight, heads):
        return (weight.view(heads, head_dim, -1) * flip[None, :, None]).view_as(weight)

    model, later = ours.model, slice(1, None)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(seed.tok_emb.weight)
        model.embed_tokens.delta.copy_(seed.value_embeds.weight)
        for block, seed_block in zip(model.layers, seed.blocks):
            attn, seed_attn = block.self_attn, seed_block.attn
            attn.q_proj.weight.copy_(flipped(seed_attn.c_q.weight, HEADS))
            attn.k_proj.down.weight.copy_(seed_attn.c_k_a.weight)
            attn.k_proj.up.weight.copy_(flipped(seed_attn.c_k_b.weight, KV_HEADS))
            attn.v_proj.weight.copy_(seed_attn.c_v.weight)
            attn.o_proj.weight.copy_(seed_attn.proj.weight)
            attn.q_gain.copy_(seed_attn.q_gain)
            block.mlp.up_proj.weight.copy_(seed_block.mlp[0].weight)
            block.mlp.down_proj.weight.copy_(seed_block.mlp[2].weight)
        model.attn_scales.copy_(seed.attn_scales)
        model.mlp_scales.copy_(seed.mlp_scales)
        model.residual_mixes.copy_(seed.resid_mixes)
        model.skip_weights.copy_(seed.skip_weights)
        model.position_frequencies.copy_(seed.resonant_freq)
        model.position_scales.copy_(seed.resonant_scale)
        model.difference_scales.copy_(seed.grad_memory_scale)
        model.confidence_vectors.copy_(seed.confidence_proj[later])  # the seed's row 0 is never read
        model.exit_proj.load_state_dict(seed.exit_proj.state_dict())
        model.td_proj.down.weight.copy_(seed.td_proj_a.weight)
        model.td_proj.up.weight.copy_(seed.td_proj_b.weight)
        model.td_alphas.copy_(seed.td_alpha_param[later])
        if state_carry:
            for ours_map, down, up in ((model.carry_z, seed.gru_z_a, seed.gru_z_b),
                                       (model.carry_h, seed.gru_h_a, seed.gru_h_b)):
                ours_map.down.weight.copy_(down.weight)
                ours_map.up.weight.copy_(up.weight)
            model.carry_gates.copy_(seed.state_gate[later])
    return seed.eval(), ours


# The submission, and what its techniques compute --------------------------------------------------------------


def test_matches_the_submissions_forward_apart_from_the_state_carry():
    seed, ours = seed_and_ours(state_carry=False)
    x = ids(2, 40)
    torch.testing.assert_close(logits(ours, x), seed(x), atol=2e-4, rtol=0)


def test_the_submissions_state_carry_leaks_the_future_and_ours_does_not():
    seed, ours = seed_and_ours(state_carry=True)
    x, replacement = ids(2, 24), ids(2, 12, seed=1)
    assert future_perturbation_gap(SeedAsCausalLM(seed), x, 12, replacement) > 1e-3
    assert future_perturbation_gap(ours, x, 12, replacement) < 1e-5
    # At the last position the prefix mean is the whole-window mean; earlier positions differ from the seed's.
    seed_logits, our_logits = seed(x), logits(ours, x)
    assert (seed_logits[:, :-1] - our_logits[:, :-1]).abs().max() > 1e-3


def test_running_prefix_mean_skips_padding_and_continues_across_calls():
    model = randomised(DepthRecurrentForCausalLM(config()))
    x = ids(1, 12)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = torch.ones_like(padded)
    mask[:, :3] = 0
    with torch.no_grad():
        alone = model(input_ids=x).logits
        torch.testing.assert_close(model(input_ids=padded, attention_mask=mask).logits[:, 3:], alone, atol=1e-5, rtol=0)
        first = model(input_ids=x[:, :5], use_cache=True)
        cache = first.past_key_values
        carry_slot = model.config.carry_slot(1)
        assert model.config.layer_types[carry_slot] == "hybrid"
        assert cache.layers[carry_slot].recurrent_states[1].item() == 5  # the count of tokens averaged so far
        rest = model(input_ids=x[:, 5:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], dim=1), alone, atol=1e-4, rtol=0)


def test_exit_gate_does_not_change_the_forward_value():
    gated = randomised(DepthRecurrentForCausalLM(config(confidence_conditioning=False)))
    plain = DepthRecurrentForCausalLM(config(confidence_conditioning=False, exit_gate=False)).eval()
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("model.exit_proj")})
    x = ids()
    torch.testing.assert_close(logits(gated, x), logits(plain, x), atol=1e-5, rtol=0)  # g x + (1 - g) x rounds


def test_skip_connection_with_three_blocks_is_a_channel_rescale():
    """x + w * skips.pop() before block 1 adds w times the stream itself (block 0's output)."""
    skipped = randomised(DepthRecurrentForCausalLM(config(skip_connection=False)))
    rescaled = DepthRecurrentForCausalLM(config()).eval()
    rescaled.load_state_dict(skipped.state_dict(), strict=False)
    with torch.no_grad():
        rescaled.model.skip_weights.fill_(0.5)
        # Without the skip, the same rescale of block 1's input: its residual mix weight on the stream times 1.5.
        for pass_idx in range(3):
            skipped.model.residual_mixes[pass_idx * 3 + 1, 0] *= 1.5
    x = ids()
    torch.testing.assert_close(logits(rescaled, x), logits(skipped, x), atol=1e-5, rtol=0)


def test_config_derives_the_cache_slots_and_rejects_other_depths():
    c = config(num_unique_layers=2, num_passes=3)
    assert c.num_hidden_layers == 6
    assert c.layer_types == ["full_attention"] * 2 + ["hybrid", "full_attention"] * 2
    assert config(state_carry=False).layer_types == ["full_attention"] * 9
    assert DepthRecurrentConfig().num_unique_layers == 3 and DepthRecurrentConfig().num_hidden_layers == 9
    assert DepthRecurrentConfig(num_hidden_layers=6).num_unique_layers == 2  # the applications give the blocks
    with pytest.raises(ValueError, match="multiple of num_passes"):
        DepthRecurrentConfig(num_hidden_layers=4)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        config(num_hidden_layers=4)
    with pytest.raises(ValueError, match="exit_gate"):
        config(exit_gate=False)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        config(num_key_value_heads=3)


def test_a_cache_without_the_carry_slots_is_refused():
    model = DepthRecurrentForCausalLM(config())
    with pytest.raises(ValueError, match="DynamicCache\\(config=model.config\\)"):
        model(input_ids=ids(), past_key_values=DynamicCache(), use_cache=True)


def test_training_loss_adds_the_regularisers_and_eval_loss_is_the_cross_entropy():
    model = randomised(DepthRecurrentForCausalLM(config()))
    x = ids()
    with torch.no_grad():
        out = model(input_ids=x, labels=x)
        expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        torch.testing.assert_close(out.loss, expected)
        assert model.training_step.item() == 0
        model.train()
        first = model(input_ids=x, labels=x).loss
        second = model(input_ids=x, labels=x).loss
    assert model.training_step.item() == 2
    # The entropy bonus (about -0.025 * entropy) outweighs the two small penalties, and it decays with the step.
    assert first < expected and first < second
    off = DepthRecurrentForCausalLM(config(entropy_bonus=0.0, temporal_difference_penalty=0.0,
                                           exit_gate_entropy_weight=0.0)).train()
    off.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(off(input_ids=x, labels=x).loss, expected)


# Muon ------------------------------------------------------------------------------------------------------------


def test_muon_gets_the_linear_weights_and_adamw_the_rest():
    model = DepthRecurrentForCausalLM(config())
    groups = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    matrices = {names[id(p)] for p in groups["matrices"]}
    assert "model.layers.0.self_attn.q_proj.weight" in matrices and "model.exit_proj.weight" in matrices
    assert {names[id(p)] for p in groups["embeddings"]} == {"model.embed_tokens.weight", "model.embed_tokens.delta"}
    assert not groups["head"]  # tied to the embedding
    assert "model.attn_scales" in {names[id(p)] for p in groups["other"]}
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    assert warmup_then_warmdown(0, 2, 10, 4) == 0.5 and warmup_then_warmdown(5, 2, 10, 4) == 1.0
    assert warmup_then_warmdown(8, 2, 10, 4) == 0.5


@pytest.fixture
def muon_args(tmp_path):
    text = shakespeare_text()
    (tmp_path / "train.txt").write_text(text[:2000])
    (tmp_path / "valid.txt").write_text(text[2000:2600])
    overrides = ["hidden_size=32", "intermediate_size=64", "num_attention_heads=4", "num_unique_layers=2",
                 "num_passes=2", "num_hidden_layers=4", "key_projection_rank=4", "technique_rank=4",
                 "max_position_embeddings=64"]
    return TrainArgs(model="depth_recurrent", preset="tiny", config_overrides=overrides,
                     train_files=[str(tmp_path / "train.txt")], validation_files=[str(tmp_path / "valid.txt")],
                     block_size=32, batch_size=4, max_steps=8, eval_every=4, eval_blocks=2, save_every=3,
                     optimizer="muon", learning_rate=0.04, weight_decay=0.01, max_grad_norm=0.0,
                     output_dir=str(tmp_path / "run"), num_threads=1)


def test_muon_trains_and_resumes_exactly(muon_args):
    uninterrupted = train(replace(muon_args, output_dir=muon_args.output_dir + "-uninterrupted"))
    losses = uninterrupted["train_loss"]
    assert losses[-1] < losses[0] - 0.5

    class Interrupt(Exception):
        pass

    def interrupt(step, loss):
        if step == 4:  # after the checkpoint of step 3
            raise Interrupt

    with pytest.raises(Interrupt):
        train(muon_args, on_step=interrupt)
    resumed = train(replace(muon_args, resume=True))
    assert resumed["train_loss"] == losses
    assert resumed["final_eval"] == uninterrupted["final_eval"]


def test_muon_optimizer_state_round_trips():
    model = DepthRecurrentForCausalLM(config())
    optimizer = MuonWithAdamW(model, lr=0.04, weight_decay=0.01, momentum_warmup_steps=4)
    model(input_ids=ids(), labels=ids()).loss.backward()
    optimizer.step()
    other = MuonWithAdamW(model, lr=0.04, weight_decay=0.01, momentum_warmup_steps=4)
    other.load_state_dict(optimizer.state_dict())
    assert other.steps_taken == 1 and other.momentum() == optimizer.momentum() == pytest.approx(0.875)


# The int8 artifact -----------------------------------------------------------------------------------------------


def test_quantize_save_load_evaluate_round_trip(tmp_path):
    model = randomised(DepthRecurrentForCausalLM(config(hidden_size=64, intermediate_size=128)))
    model.save_pretrained(tmp_path / "model")
    artifact = tmp_path / "model.int8.zlib"
    size = save_quantized(model, artifact, keep_float_max_numel=1000)  # so that these small matrices go int8
    assert size == artifact.stat().st_size
    raw_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert size < raw_bytes / 2  # int8 matrices, fp16 small tensors, then zlib

    quantized = quantize_state_dict(model.state_dict(), keep_float_max_numel=1000)
    assert quantized["model.layers.0.mlp.up_proj.weight"]["q"].dtype == torch.int8
    assert quantized["model.attn_scales"]["tensor"].dtype == torch.float16

    folder = load_quantized(artifact, tmp_path / "model", tmp_path / "dequantized")
    reloaded = DepthRecurrentForCausalLM.from_pretrained(folder).eval()
    for name, tensor in model.state_dict().items():
        restored = reloaded.state_dict()[name]
        assert restored.dtype == tensor.dtype, name
        if tensor.is_floating_point():
            # Per-row int8: an error of about half a step (row max / 127; the fp16 scale adds a little).
            bound = tensor.abs().amax(dim=-1, keepdim=True) / 127 * 0.6 if tensor.dim() == 2 else 1e-3 * (
                1 + tensor.abs())
            assert ((restored - tensor).abs() <= bound + 1e-6).all(), name
        else:
            assert torch.equal(restored, tensor), name
    x = ids(2, 30)
    assert (logits(reloaded, x) - logits(model, x)).abs().max() < 0.5
    stream, byte_lengths = ids(1, 200, seed=4)[0], torch.ones(VOCAB, dtype=torch.long)
    before, after = (evaluate_sliding_window(m, stream, byte_lengths, window=64, stride=16) for m in (model, reloaded))
    assert after.tokens == before.tokens == 199 and abs(after.bits_per_byte - before.bits_per_byte) < 0.05
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    assert Path(folder, "config.json").is_file()


def pass_zero_output_gradient(exit_bias: float) -> torch.Tensor:
    """The loss's gradient at the output of pass 0 (before its exit gate), with the gate held at sigmoid(exit_bias)
    on every token. Carry and confidence are off, so the gated stream is the only path from there to the loss."""
    torch.manual_seed(0)
    model = randomised(DepthRecurrentForCausalLM(config(num_passes=2, state_carry=False,
                                                        confidence_conditioning=False)))
    with torch.no_grad():
        model.model.exit_proj.weight.zero_()
        model.model.exit_proj.bias.fill_(exit_bias)
    outputs = []

    def keep(module, inputs, output):
        output.retain_grad()
        outputs.append(output)

    model.model.layers[-1].register_forward_hook(keep)  # its first call ends pass 0
    x = ids()
    model(input_ids=x, labels=x, use_cache=False).loss.backward()  # eval mode: the cross-entropy alone
    return outputs[0].grad


def test_exit_gate_scales_the_gradient_into_earlier_passes():
    half, mostly = pass_zero_output_gradient(0.0), pass_zero_output_gradient(2.0)
    assert half.abs().max() > 0
    # The forward values are the same at both gates, so the gradients differ by exactly the gates' ratio.
    torch.testing.assert_close(half / torch.sigmoid(torch.tensor(0.0)), mostly / torch.sigmoid(torch.tensor(2.0)),
                               rtol=1e-3, atol=1e-9)


def test_entropy_bonus_scores_the_positions_whose_next_label_counts():
    model = DepthRecurrentForCausalLM(config(entropy_bonus=0.5, entropy_bonus_decay_steps=None))
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, VOCAB, generator=generator) * 3
    labels = torch.randint(0, VOCAB, (2, 8), generator=generator)
    labels[0, 3:6] = -100  # e.g. a prompt or padding in shifted labels
    labels[1, 0] = labels[1, 7] = -100
    log_probs = logits.log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # [batch, position]
    # Position t predicts labels[t + 1]: it is scored when that label is not -100.
    scored = [(0, t) for t in range(7) if t + 1 not in (3, 4, 5)] + [(1, t) for t in range(6)]
    expected = -0.5 * torch.stack([entropy[b, t] for b, t in scored]).mean()
    torch.testing.assert_close(model.training_regularisers(logits, labels, None), expected)


def test_a_resumed_run_continues_the_entropy_bonus_step_count(text_files, tmp_path):
    train_files, validation_files = text_files
    # A fast decay, so that a step count restarting at 0 would change the losses after the resume.
    args = TrainArgs(model="depth_recurrent", preset="tiny", train_files=train_files, validation_files=validation_files,
                     block_size=32, batch_size=4, max_steps=4, eval_every=0, save_every=2, num_threads=1,
                     config_overrides=["entropy_bonus=0.5", "entropy_bonus_decay_steps=1.0"],
                     output_dir=str(tmp_path / "full"))
    full = train(args)

    class Stop(Exception):
        pass

    def stop(step, loss):
        if step == 2:
            raise Stop

    interrupted = replace(args, output_dir=str(tmp_path / "interrupted"))
    with pytest.raises(Stop):
        train(interrupted, on_step=stop)
    resumed = train(replace(interrupted, resume=True))
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6, abs=0)
