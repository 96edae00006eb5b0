"""The PPO loop with LoRA, bf16-mixed and gradient checkpointing, against in-process services on the tiny model:
step 0 pushes exactly the SFT weights, only adapters and heads train, a checkpoint holds adapters and resumes
with nothing repeated, and the final policy is an adapter plus a merged dir equal to what the replicas serve."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.core.errors import UserError
from rlhf.core.training import is_peft
from rlhf.core.weights import LORA, weights_kind
from rlhf.learner.checkpoints import saved_tensors
from rlhf.learner.loop import train
from rlhf.learner.state import build_state
from rlhf.policy.local import LocalPolicy
from tests.learner.test_learner_loop import make_config, read_jsonl, services  # noqa: F401 - a fixture

LORA_RUN = dict(lora_r=8, lora_alpha=16, precision="bf16-mixed", gradient_checkpointing=True)


def test_step_0_pushes_exactly_the_sft_weights_and_only_adapters_and_heads_train(tiny_model_dir, synth_dir, tmp_path):
    state = build_state(make_config(tiny_model_dir, synth_dir, tmp_path / "run", **LORA_RUN))
    assert is_peft(state.policy) and is_peft(state.value)
    sft = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    pushed = state.policy_weights()  # the adapter's factors only
    assert weights_kind(pushed) == LORA
    assert all(not v.any() for k, v in pushed.items() if k.endswith("lora_B"))  # B starts at 0
    replica = LocalPolicy(tiny_model_dir, device="cpu")
    replica.update_weights(pushed, 0)
    served = replica.policy.model.state_dict()
    assert all(torch.equal(served[k], sft[k]) for k in sft)  # W_base + 0 is exactly the SFT weights
    full = sum(t.numel() * t.element_size() for t in sft.values())
    assert sum(t.numel() * t.element_size() for t in pushed.values()) < 0.2 * full
    trained = {n for n, p in state.value.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or ".score." in n for n in trained)  # the value head trains in full
    total = sum(p.numel() for p in state.parameters())
    everything = sum(p.numel() for p in [*state.policy.parameters(), *state.value.parameters()])
    assert total < 0.2 * everything


def test_lora_run_resumes_after_a_kill_with_nothing_repeated_and_step_3_recomputed(
    tiny_model_dir,
    synth_dir,
    tmp_path,
    services,  # noqa: F811
):
    out = tmp_path / "run"
    train(make_config(tiny_model_dir, synth_dir, out, anneal_lr=False, lr=1e-3, **LORA_RUN), services)
    original = read_jsonl(out / "metrics.jsonl")
    checkpoint = out / "checkpoints" / "step-000002"
    saved = saved_tensors(checkpoint)
    assert any(n.startswith("policy.") and "lora_A" in n for n in saved)
    assert any(n.startswith("value.") and "lora_B" in n for n in saved)
    assert any(n.startswith("value.") and "score" in n for n in saved)  # the value head trains too
    assert not any("base_layer" in n or "wte" in n for n in saved)  # adapters and heads, not the frozen base
    shutil.rmtree(out / "checkpoints" / "step-000003")  # as if SIGKILL struck before step 3's checkpoint
    (out / "checkpoints" / "latest").write_text("step-000002")

    train(
        make_config(tiny_model_dir, synth_dir, out, steps=4, resume=True, anneal_lr=False, lr=1e-3, **LORA_RUN),
        services,
    )
    resumed = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for key in ("objective/reward", "objective/kl", "loss/policy", "loss/value", "loss/ptx"):
        assert resumed[2][key] == pytest.approx(original[2][key], rel=1e-4, abs=1e-6), key
    assert original[-1]["objective/kl"] != 0  # the adapter did move the policy
    for other in (0, 16):  # a checkpoint of adapters resumes only with the same rank
        with pytest.raises(UserError, match="was trained with --lora-r 8; resume it with the same --lora-r"):
            train(
                make_config(tiny_model_dir, synth_dir, out, steps=5, resume=True, **{**LORA_RUN, "lora_r": other}),
                services,
            )


def test_a_bf16_true_lora_run_resumes_with_float32_optimizer_moments(tiny_model_dir, synth_dir, tmp_path, services):  # noqa: F811
    out = tmp_path / "run"
    bf16_true = {**LORA_RUN, "precision": "bf16-true"}
    train(make_config(tiny_model_dir, synth_dir, out, steps=2, lr=1e-3, **bf16_true), services)
    state = train(make_config(tiny_model_dir, synth_dir, out, steps=3, resume=True, lr=1e-3, **bf16_true), services)
    assert state.step == 3 and [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    moments = {v.dtype for s in state.optimizer.state.values() for k, v in s.items() if k.startswith("exp_avg")}
    assert moments == {torch.float32}


def test_the_final_policy_is_an_adapter_and_a_merged_dir_that_equals_what_replicas_serve(
    tiny_model_dir,
    synth_dir,
    tmp_path,
    services,  # noqa: F811
):
    out = tmp_path / "run"
    state = train(make_config(tiny_model_dir, synth_dir, out, lr=1e-3, **LORA_RUN), services)
    # the merge wrote the adapter into the base the value model shared: the state no longer offers that model
    assert state.value is None
    assert (out / "policy" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "policy" / "merged").state_dict()
    served = services.policies[0].policy.model.state_dict()  # the replica, after the last push
    assert set(served) == set(merged)
    for name, tensor in merged.items():
        torch.testing.assert_close(served[name], tensor, rtol=0, atol=1e-6)
    sft = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(merged[k], sft[k]) for k in sft)


def test_the_value_head_reads_every_position_under_lora_for_llama_and_gpt2(tiny_model_dir):
    """The backbone is found under the PeftModel for any architecture (Llama's prefix, "model", is also the
    name of peft's own wrapper attribute), and at step 0 the values are the plain model's."""
    import copy

    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    from rlhf.core.training import TrainingOptions, prepare_model
    from rlhf.learner.models import value_forward

    torch.manual_seed(0)
    llama = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_labels=1,
            pad_token_id=0,
        )
    )
    gpt2 = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    for plain in (llama.eval(), gpt2.eval()):
        adapted = prepare_model(copy.deepcopy(plain), TrainingOptions(lora_r=4), "score").eval()
        prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
        with torch.no_grad():
            want, got = value_forward(plain, prompts, responses, 0), value_forward(adapted, prompts, responses, 0)
        assert got.shape == (2, 3) and torch.equal(got, want)


# bf16 keeps 8 bits of mantissa; through the tiny model's layers the log-probs move by ~1e-2, and the PPO
# losses on a fixed batch stay within 3% of float32's (worst of seeds 0-4 here: under 1%).
PPO_BF16_RTOL = 0.03


def test_the_ppo_loss_under_bf16_mixed_matches_fp32_on_a_fixed_batch(tiny_model_dir, synth_dir, tmp_path):
    from rlhf.core.training import TrainingOptions
    from rlhf.learner import ppo
    from rlhf.learner.models import policy_forward, value_forward

    state = build_state(make_config(tiny_model_dir, synth_dir, tmp_path / "run"))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (5,), generator=g).tolist() for _ in range(6)]
    responses = [torch.randint(3, 200, (8,), generator=g).tolist() for _ in range(6)]
    with torch.no_grad():
        old, _, mask = policy_forward(state.policy, prompts, responses, state.pad_id)
        old_values = value_forward(state.value, prompts, responses, state.pad_id)
    old = old + 0.05 * torch.randn(old.shape, generator=g)  # a rollout policy a little off the current one
    advantages, returns = torch.randn(old.shape, generator=g), torch.randn(old.shape, generator=g)
    losses, grads = {}, {}
    for precision in ("fp32", "bf16-mixed"):
        state.options = TrainingOptions(precision=precision)
        state.optimizer.zero_grad()
        with state.autocast():
            logprobs, _, _ = policy_forward(state.policy, prompts, responses, state.pad_id)
            values = value_forward(state.value, prompts, responses, state.pad_id)
        pg, _, _ = ppo.clipped_policy_loss(logprobs, old, advantages, mask, 0.2)
        vf, _ = ppo.clipped_value_loss(values, old_values, returns, mask, 0.2)
        (pg + 0.1 * vf).backward()
        losses[precision] = (pg.item(), vf.item())
        grads[precision] = torch.cat([p.grad.flatten() for p in state.parameters() if p.grad is not None])
    for got, want in zip(losses["bf16-mixed"], losses["fp32"], strict=True):
        assert got == pytest.approx(want, rel=PPO_BF16_RTOL, abs=1e-3)
    assert torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16-mixed"], dim=0) > 0.95


def frozen_backbone(model) -> dict[str, torch.nn.Parameter]:
    from rlhf.core.training import base_model

    return {
        name.replace(".base_layer.", "."): p
        for name, p in base_model(model).base_model.named_parameters()
        if not p.requires_grad
    }


def test_the_value_model_shares_the_policys_frozen_base_only_where_it_holds_the_same_weights(
    tiny_model_dir, synth_dir, tmp_path
):
    from transformers import AutoTokenizer

    state = build_state(make_config(tiny_model_dir, synth_dir, tmp_path / "run", **LORA_RUN))
    policy, value = frozen_backbone(state.policy), frozen_backbone(state.value)
    assert policy.keys() == value.keys() and all(value[name] is policy[name] for name in policy)  # one copy
    everything = {id(p) for m in (state.policy, state.value) for p in m.parameters()}
    assert len(everything) < len(list(state.policy.parameters())) + len(list(state.value.parameters()))

    # training moves only adapters and heads: the shared base stays the SFT model's
    sft = AutoModelForCausalLM.from_pretrained(tiny_model_dir).transformer.state_dict()
    state.value.train()
    for _ in range(2):
        for model in (state.policy, state.value):
            loss = model(input_ids=torch.tensor([[5, 9, 13, 2]])).logits.float().pow(2).mean()
            loss.backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
    compared = [name for name in sft if name in policy]
    assert len(compared) == len(policy) and all(torch.equal(policy[name], sft[name]) for name in compared)

    # full fine-tuning trains both backbones: nothing is shared
    full = build_state(make_config(tiny_model_dir, synth_dir, tmp_path / "full"))
    policy_ids = {id(p) for p in full.policy.parameters()}
    assert not any(id(p) in policy_ids for p in full.value.parameters())

    # a value model whose weights differ in one tensor (say, a reward model) keeps a base of its own
    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] += 0.5
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    apart = build_state(make_config(tiny_model_dir, synth_dir, tmp_path / "apart", value_model=str(other), **LORA_RUN))
    policy, value = frozen_backbone(apart.policy), frozen_backbone(apart.value)
    assert not any(value[name] is policy[name] for name in policy)
    assert not torch.equal(value["h.0.mlp.c_fc.weight"], policy["h.0.mlp.c_fc.weight"])
