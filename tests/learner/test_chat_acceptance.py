"""The synthetic task as conversations, end to end on a tiny Llama-layout model whose ChatML template ends a
turn with <|im_end|>: `rlhf train sft`, `rlhf train rm` and `rlhf train dpo` on conversational files, then GRPO
with `rlhf serve policy|reward|reference` and `rlhf train ppo` as separate processes on conversational prompts.
The ground truth rises as on the text form."""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from types import SimpleNamespace

import pytest

from rlhf.core.chat import render
from rlhf.core.modeling import load_tokenizer
from rlhf.core.types import GenerationParams
from rlhf.policy.client import PolicyClient
from rlhf.reward.client import RewardClient
from rlhf.toy.synthetic import ground_truth_score, write_task
from tests.conftest import RM_FLAGS, SFT_FLAGS
from tests.learner.test_critic_free_acceptance import GROUP, KL_IN_LOSS, RECIPE, SAMPLES, STEPS, TRUTH_GAIN
from tests.learner.test_learner_acceptance import Run, mean

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("chat-data"), chat=True), write_task(
        tmp_path_factory.mktemp("chat-rm-data"), preference_scale=3, chat=True
    )["preferences"]


def evaluate(policy, reward, tokenizer, conversations) -> tuple[float, float]:
    """(mean reward-model score, mean ground truth) of 4 samples per held-out conversation, fixed seed: the
    policy is sent its own rendering, the reward service the messages."""
    texts = [render(tokenizer, [(m["role"], m["content"]) for m in c], generation_prompt=True) for c in conversations]
    samples = policy.generate(texts, GenerationParams(max_new_tokens=12, n=4, seed=1234))
    items = [(conversations[s.prompt_index], s.response_text) for s in samples]
    truth = [ground_truth_score(c[-1]["content"], response) for c, response in items]
    return mean(reward.score(items)), mean(truth)


def test_sft_rm_dpo_and_grpo_on_conversations_raise_the_ground_truth(
    trained_models, tiny_llama_dir, chat_task, tmp_path, seed, record_figures
):
    paths, preferences = chat_task
    sft = trained_models.train("sft", tiny_llama_dir, paths["sft"], *SFT_FLAGS, "--seed", str(seed))
    rm = trained_models.train("rm", sft.dir, preferences, *RM_FLAGS, "--seed", str(seed))
    dpo = trained_models.train("dpo", sft.dir, paths["preferences"], "--device", "cpu", "--lr", "1e-4")
    rm_accuracy = float(re.search(r"held-out pairwise accuracy: ([0-9.]+)", rm.stdout).group(1))
    dpo_before, dpo_after = map(float, re.search(r"\): ([0-9.]+) -> ([0-9.]+)", dpo.stdout).groups())
    conversations = [json.loads(line)["prompt"] for line in paths["prompts_eval"].read_text().splitlines()]
    tokenizer = load_tokenizer(sft.dir)
    with ExitStack() as stack:
        run = Run(stack, SimpleNamespace(sft=sft.dir, rm=rm.dir, prompts=paths["prompts"]), tmp_path / "run")
        policy = stack.enter_context(PolicyClient(run.policies[0].target))
        reward = stack.enter_context(RewardClient(run.reward.target))
        before = evaluate(policy, reward, tokenizer, conversations)
        run.start_learner(
            "--advantage-estimator", "grpo", "--samples-per-prompt", str(GROUP), "--batch-size",
            str(SAMPLES // GROUP), "--steps", str(STEPS), "--seed", str(seed), *RECIPE, *KL_IN_LOSS,
        )  # fmt: skip
        run.wait_learner()
        after = evaluate(policy, reward, tokenizer, conversations)
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    first = json.loads((run.out / "rollouts.jsonl").read_text().splitlines()[0])
    assert first["prompt"].startswith("<|im_start|>user\n")  # the policy was sent its own rendering
    figures = {
        "rm_accuracy": rm_accuracy,
        "dpo_accuracy_gain": dpo_after - dpo_before,
        "ground_truth_gain": after[1] - before[1],
    }
    record_figures(figures, {"rm_accuracy": 0.6, "dpo_accuracy_gain": 0.0, "ground_truth_gain": TRUTH_GAIN})
    assert rm_accuracy > 0.6
    assert dpo_after > dpo_before
    assert after[1] - before[1] > TRUTH_GAIN, (before, after)
