"""rlhf.core.training: LoRA targets found by type, merged weights equal to peft's merge, step 0 unchanged, the
float32-state AdamW against torch's, bf16-mixed against fp32 on a fixed batch, and one-line refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlhf.core.errors import UserError
from rlhf.core.training import (
    Float32StateAdamW,
    TrainingOptions,
    autocast,
    check_precision,
    make_optimizer,
    prepare_model,
    trainable_parameters,
)

LORA = TrainingOptions(lora_r=4, lora_alpha=8)
IDS = torch.tensor([[5, 9, 13, 2, 7, 11], [3, 3, 8, 21, 4, 6]])


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )


def tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32))


def adapted(model) -> set[str]:
    """The last name part of every module LoRA wrapped."""
    from peft.tuners.lora import LoraLayer

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize(
    "make, expected",
    [
        (tiny_gpt2, {"c_attn", "c_proj", "c_fc"}),  # Conv1D, GPT-2's own layer type
        (tiny_llama, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_default_targets_are_every_attention_and_mlp_projection_found_by_type(make, expected):
    model = prepare_model(make(), LORA, "causal-lm")
    assert adapted(model) == expected  # and not the output head


def test_named_targets_and_an_unknown_name(tiny_model_dir):
    model = prepare_model(tiny_llama(), TrainingOptions(lora_r=4, lora_target_modules="q_proj, v_proj"), "causal-lm")
    assert adapted(model) == {"q_proj", "v_proj"}
    with pytest.raises(UserError, match="^--lora-target-modules: "):
        prepare_model(tiny_llama(), TrainingOptions(lora_r=4, lora_target_modules="nope"), "causal-lm")


def _train_a_little(model, steps: int = 3):
    optimizer = make_optimizer(trainable_parameters(model), LORA, lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=IDS, labels=IDS).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_step_0_is_the_base_model_and_the_merged_weights_compute_what_the_adapter_does(make):
    base = make().eval()
    model = prepare_model(copy.deepcopy(base), LORA, "causal-lm").eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, base(input_ids=IDS).logits)  # B starts at 0
    _train_a_little(model)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()  # what OUT/merged and the replicas hold
    assert set(merged) == set(base.state_dict())
    changed = [n for n in merged if not torch.equal(merged[n], base.state_dict()[n])]
    assert changed and all(n.endswith("weight") for n in changed)  # only the adapted matrices move
    plain = copy.deepcopy(base)
    plain.load_state_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=1e-4, atol=1e-5)


def test_float32_state_adamw_is_torchs_adamw_on_float32_and_keeps_float32_states_for_bf16():
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(3)]
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    a = Float32StateAdamW([ours], lr=0.1, weight_decay=0.01)
    b = torch.optim.AdamW([theirs], lr=0.1, weight_decay=0.01)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        a.step()
        b.step()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
    # bf16 weights: the moments stay float32 (after a reload too), and one step lands on one of the two bf16
    # neighbours of float32 AdamW's result
    low = torch.nn.Parameter(start.to(torch.bfloat16))
    reference = torch.nn.Parameter(low.detach().float())
    c, d = Float32StateAdamW([low], lr=0.1), torch.optim.AdamW([reference], lr=0.1)
    low.grad, reference.grad = grads[0].to(torch.bfloat16), grads[0].to(torch.bfloat16).float()
    c.step()
    d.step()
    assert c.state[low]["exp_avg"].dtype == torch.float32 and low.dtype == torch.bfloat16
    spacing = reference.detach().abs() * 2**-7  # bf16 keeps 8 significant bits: neighbours lie within this
    assert ((low.detach().float() - reference.detach()).abs() <= spacing).all()
    reloaded = Float32StateAdamW([low], lr=0.1)
    reloaded.load_state_dict(c.state_dict())  # resume: torch would cast the moments to bf16
    assert {reloaded.state[low][k].dtype for k in ("exp_avg", "exp_avg_sq")} == {torch.float32}
    assert isinstance(make_optimizer([low], TrainingOptions(precision="bf16-true"), lr=0.1), Float32StateAdamW)
    assert type(make_optimizer([ours], TrainingOptions(precision="bf16-mixed"), lr=0.1)) is torch.optim.AdamW


# bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4%); over a few layers the loss on a fixed
# batch stays within 2% of float32's, and the gradients point the same way.
BF16_LOSS_RTOL = 0.02


def test_bf16_mixed_loss_and_gradient_match_fp32_on_a_fixed_batch(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    device = torch.device("cpu")
    ids = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    losses, grads = {}, {}
    for precision in ("fp32", "bf16-mixed"):
        model.zero_grad()
        with autocast(TrainingOptions(precision=precision), device):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses[precision] = loss.item()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert losses["bf16-mixed"] == pytest.approx(losses["fp32"], rel=BF16_LOSS_RTOL)
    assert torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16-mixed"], dim=0) > 0.98


def test_bf16_true_casts_weights_and_gradient_checkpointing_turns_on(tiny_model_dir):
    model = prepare_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        TrainingOptions(precision="bf16-true", gradient_checkpointing=True),
        "causal-lm",
    )
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.is_activation_checkpointing


def test_a_gpu_without_bf16_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(UserError, match=r"^--precision bf16-mixed: this GPU \(Tesla V100\) has no bfloat16"):
        check_precision(TrainingOptions(precision="bf16-mixed"), torch.device("cuda"))
    check_precision(TrainingOptions(precision="fp32"), torch.device("cuda"))
    check_precision(TrainingOptions(precision="bf16-true"), torch.device("cpu"))  # emulated on CPUs: allowed


def test_bf16_true_updates_far_below_bf16_resolution_still_move_the_weights_on_average():
    """lr 1e-5 on weights of 1: each step is 1/400 of bf16's spacing there. Round-to-nearest would drop every
    update; stochastic rounding keeps the mean on float32's path (here -1e-4 after 10 steps, +-1e-5)."""
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.ones(200_000, dtype=torch.bfloat16))
    optimizer = Float32StateAdamW([weights], lr=1e-5, weight_decay=0.0)
    for _ in range(10):
        weights.grad = torch.ones_like(weights)  # Adam's step is lr * sign: -1e-5 each time
        optimizer.step()
    assert weights.detach().float().mean().item() - 1 == pytest.approx(-1e-4, abs=1e-5)
    assert (weights.detach() != 1).float().mean() > 0.001  # some weights moved a whole bf16 step
