"""The service tokenizes whole batches (`encode_pairs`); training tokenizes pair by pair (`encode_pair`).
Scores can only match if the ids do, truncation included."""

from rlhf.core.modeling import load_tokenizer
from rlhf.core.text import encode_pair, encode_pairs

PAIRS = [
    ("Human: Describe cats.\nAssistant:", " cats are kind."),
    ("", ""),
    ("naïve café ☃ 日本語 🙂", " 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00 <|endoftext|> done"),
    ("Human: " + "tell me about the old lighthouse. " * 30 + "\nAssistant:", " it stands."),  # prompt cut
    ("Human: hi\nAssistant:", " and" * 80),  # response alone longer than the context: its start is cut
]


def test_batched_encoding_gives_the_same_ids_as_pair_by_pair(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    batched = encode_pairs(tokenizer, PAIRS, max_length=64)
    single = [encode_pair(tokenizer, p, r, max_length=64) for p, r in PAIRS]
    assert batched == single
    assert [e.truncated for e in batched] == [False, False, False, True, True]
    assert batched[3].response_ids == single[3].response_ids and len(batched[3].input_ids) == 64
    assert batched[4].prompt_ids == [] and batched[4].response_ids[-1] == tokenizer.eos_token_id
    assert encode_pairs(tokenizer, [], max_length=64) == []
