"""The K-wise loss on hand-computed values, per-prompt grouping, data loading, and bias folding."""

import json
import math
import random
from math import comb

import pytest
import torch

from rlhf.core.errors import UserError
from rlhf.training.losses import IGNORE, kwise_loss, pairwise_accuracy, response_nll_sum
from rlhf.training.preferences import Ranking, collate, load_rankings, prompt_batches, split_rankings

# -log sigma(x) = log(1 + e^-x), by hand:
# x=1.0 -> 0.3132617, x=2.5 -> 0.0788897, x=1.5 -> 0.2014133, x=-0.5 -> 0.9740770
NLL_1_0, NLL_2_5, NLL_1_5, NLL_NEG_0_5 = 0.3132617, 0.0788897, 0.2014133, 0.9740770


def _loss(batch, rewards):
    t = lambda xs: torch.tensor(xs)  # noqa: E731
    return kwise_loss(torch.tensor(rewards), t(batch.winners), t(batch.losers), t(batch.group), batch.num_prompts)


def test_k3_loss_by_hand():
    # Responses a, b, c with rewards 1.0, -0.5, 2.0; labellers rank c > a > b.
    batch = collate([Ranking("x", ("a", "b", "c"), (2, 0, 1))])
    assert list(zip(batch.winners, batch.losers, strict=True)) == [(2, 0), (2, 1), (0, 1)]
    # Comparisons c>a (diff 1.0), c>b (2.5), a>b (1.5): loss = (0.3132617 + 0.0788897 + 0.2014133) / 3
    expected = (NLL_1_0 + NLL_2_5 + NLL_1_5) / 3
    assert _loss(batch, [1.0, -0.5, 2.0]).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.1978549, abs=1e-6)


def test_batch_loss_is_the_mean_over_prompts_of_each_prompts_mean():
    # Prompt 1 as above (3 comparisons); prompt 2 pairwise with the chosen one scored 0.5 lower.
    batch = collate([Ranking("x", ("a", "b", "c"), (2, 0, 1)), Ranking("y", ("d", "e"), (0, 1))])
    per_prompt = [(NLL_1_0 + NLL_2_5 + NLL_1_5) / 3, NLL_NEG_0_5]
    # Not the mean over the 4 comparisons: each prompt weighs the same whatever its K.
    assert _loss(batch, [1.0, -0.5, 2.0, 0.2, 0.7]).item() == pytest.approx(sum(per_prompt) / 2, abs=1e-6)
    assert pairwise_accuracy(
        torch.tensor([1.0, -0.5, 2.0, 0.2, 0.7]), torch.tensor(batch.winners), torch.tensor(batch.losers)
    ) == (3, 4)


def test_gradient_pushes_winner_up_and_loser_down():
    batch = collate([Ranking("x", ("a", "b"), (1, 0))])
    rewards = torch.zeros(2, requires_grad=True)
    kwise_loss(rewards, *(torch.tensor(v) for v in (batch.winners, batch.losers, batch.group)), 1).backward()
    assert rewards.grad.tolist() == pytest.approx([0.5, -0.5])  # d/dr of -log sigma(r_b - r_a) at 0: sigma(0) = 0.5


def test_one_prompts_comparisons_stay_in_one_batch_and_each_response_is_encoded_once():
    rng = random.Random(0)
    rankings = []
    for i in range(23):
        k = rng.randint(2, 5)
        order = list(range(k))
        rng.shuffle(order)
        rankings.append(Ranking(f"prompt {i}", tuple(f"response {i}.{j}" for j in range(k)), tuple(order)))
    batches = prompt_batches(rankings, batch_size=4, rng=random.Random(1))
    seen = []
    for batch in batches:
        assert len(batch.items) == len(set(batch.items))  # each (prompt, response) once per batch
        for g in range(batch.num_prompts):
            pairs = [
                (batch.items[w], batch.items[lo])
                for w, lo, gg in zip(batch.winners, batch.losers, batch.group, strict=True)
                if gg == g
            ]
            prompt = pairs[0][0][0]
            ranking = next(r for r in rankings if r.prompt == prompt)
            assert all(w[0] == prompt and lo[0] == prompt for w, lo in pairs)  # no other prompt's items
            assert len(pairs) == comb(len(ranking.responses), 2)  # all C(K,2) of them, here
            best = ranking.responses[ranking.order[0]]
            assert sum(w[1] == best for w, _ in pairs) == len(ranking.responses) - 1
            seen.append(prompt)
    assert sorted(seen) == sorted(r.prompt for r in rankings)  # every prompt exactly once per epoch


def test_jsonl_mixes_pairwise_and_kwise_rows(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "responses": ["x", "y", "z"], "ranking": [1, 2, 0]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_rankings(str(path)) == [Ranking("p", ("good", "bad"), (0, 1)), Ranking("q", ("x", "y", "z"), (1, 2, 0))]


def test_parquet_rows_load_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(
        [
            {"prompt": "p", "chosen": "good", "rejected": "bad", "responses": None, "ranking": None},
            {"prompt": "q", "chosen": None, "rejected": None, "responses": ["x", "y"], "ranking": [1, 0]},
        ]
    )
    pq.write_table(table, tmp_path / "prefs.parquet")
    assert load_rankings(str(tmp_path / "prefs.parquet")) == [
        Ranking("p", ("good", "bad"), (0, 1)),
        Ranking("q", ("x", "y"), (1, 0)),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "p", "chosen": "a"}', "needs 'chosen' and 'rejected'"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}', "each index 0..1 once"),
        ('{"prompt": "p", "responses": ["a"], "ranking": [0]}', "at least 2 responses"),
        ('{"chosen": "a", "rejected": "b"}', "string 'prompt'"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_rows_name_their_line(tmp_path, line, message):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + line + "\n")
    with pytest.raises(UserError, match=f"prefs.jsonl:2: .*{message}"):
        load_rankings(str(path))


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_rankings(str(tmp_path / "nope.jsonl"))


def test_split_holds_out_whole_prompts():
    rankings = [Ranking(f"p{i}", ("a", "b"), (0, 1)) for i in range(50)]
    train, held_out = split_rankings(rankings, 0.2, seed=3)
    assert len(held_out) == 10 and len(train) == 40
    assert not {r.prompt for r in train} & {r.prompt for r in held_out}
    assert split_rankings(rankings, 0.2, seed=3) == (train, held_out)  # seeded


def test_response_nll_counts_only_labelled_tokens_each_predicted_by_the_position_before():
    logits = torch.zeros(1, 4, 5)  # (B, T, V): uniform, -log p = log 5 everywhere
    logits[0, 1, 3] = 100.0  # position 1 predicts token 3 at position 2 almost surely
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1]])  # prompt, prompt, response, response
    loss, count = response_nll_sum(logits, labels)
    assert count == 2
    assert loss.item() == pytest.approx(math.log(5), abs=1e-4)  # ~0 for the first response token
