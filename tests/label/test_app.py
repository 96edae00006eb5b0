"""The labelling API on a real loopback server: rankings land on disk in the format `rlhf train rm` reads,
once per (item, annotator), resumable, shared by --overlap annotators, behind tokens, and bad input gets
a 4xx with a message."""

from __future__ import annotations

import json

import pytest

from rlhf.core.jsonl import read_jsonl
from rlhf.label.config import LabelConfig
from rlhf.training.preferences import load_rankings
from tests.label.conftest import PROMPTS, RESPONSES, call, label_server


def rows(path) -> list[dict]:
    return [row for _, row in read_jsonl(path)]


def test_rank_every_prompt_then_done_and_the_file_trains_a_reward_model(tmp_path, candidates):
    out = tmp_path / "rankings.jsonl"
    config = LabelConfig(candidates=str(candidates), out=str(out), annotator="ana")
    with label_server(config) as url:
        assert call(f"{url}/api/session") == (200, {"annotator": "ana", "auth": False, "ties": False})
        for n in range(3):
            status, item = call(f"{url}/api/next")
            assert status == 200 and item["prompt"] == PROMPTS[n] and item["responses"] == RESPONSES[n]
            assert (item["ranked"], item["remaining"]) == (n, 3 - n)
            reply = call(f"{url}/api/rankings", {"item": item["item"], "order": [[2], [0], [1]], "seconds": 1.5})
            assert reply == (200, {"stored": True, "duplicate": False})
            assert len(rows(out)) == n + 1  # on disk before the reply
        assert call(f"{url}/api/next") == (200, {"done": True, "ranked": 3})
    written = rows(out)
    assert [r["ranking"] for r in written] == [[2, 0, 1]] * 3
    assert {(r["annotator"], r["seconds"]) for r in written} == {("ana", 1.5)}
    assert "ties" not in written[0] and "seed" not in written[0]  # candidates: nothing sampled
    rankings = load_rankings(str(out))  # the reader of `rlhf train rm` and `rlhf train dpo`
    assert rankings[0].responses[rankings[0].order[0]] == RESPONSES[0][2]


def test_a_double_submit_is_stored_once(tmp_path, candidates):
    out = tmp_path / "rankings.jsonl"
    with label_server(LabelConfig(candidates=str(candidates), out=str(out))) as url:
        _, item = call(f"{url}/api/next?annotator=bo")
        body = {"item": item["item"], "annotator": "bo", "order": [[0], [1], [2]], "seconds": 2}
        assert call(f"{url}/api/rankings", body)[1]["stored"] is True
        assert call(f"{url}/api/rankings", {**body, "order": [[1], [0], [2]]}) == (
            200,
            {"stored": False, "duplicate": True},
        )
    assert [r["ranking"] for r in rows(out)] == [[0, 1, 2]]


def test_a_restart_skips_what_each_annotator_ranked(tmp_path, candidates):
    out = tmp_path / "rankings.jsonl"
    config = LabelConfig(candidates=str(candidates), out=str(out), overlap=2)
    with label_server(config) as url:
        _, item = call(f"{url}/api/next?annotator=ana")
        call(f"{url}/api/rankings", {"item": item["item"], "annotator": "ana", "order": [[0], [1], [2]], "seconds": 1})
    with label_server(config) as url:
        assert call(f"{url}/api/next?annotator=ana")[1]["prompt"] == PROMPTS[1]
        assert call(f"{url}/api/next?annotator=cy")[1]["prompt"] == PROMPTS[0]  # overlap 2: still needs one more


def test_overlap_shows_each_prompt_to_that_many_annotators(tmp_path, candidates):
    out = tmp_path / "rankings.jsonl"
    with label_server(LabelConfig(candidates=str(candidates), out=str(out), overlap=2)) as url:
        first = [call(f"{url}/api/next?annotator={name}")[1]["prompt"] for name in ("ana", "bo", "cy")]
        assert first == [PROMPTS[0], PROMPTS[0], PROMPTS[1]]  # cy: prompt 0 is already with two others
        assert call(f"{url}/api/next?annotator=ana")[1]["prompt"] == PROMPTS[0]  # the same until submitted


def test_ties_are_stored_as_groups_and_refused_when_off(tmp_path, candidates):
    order = {"order": [[1], [0, 2]], "seconds": 3}
    out = tmp_path / "off.jsonl"
    with label_server(LabelConfig(candidates=str(candidates), out=str(out), annotator="ana")) as url:
        item = call(f"{url}/api/next")[1]["item"]
        status, reply = call(f"{url}/api/rankings", {"item": item, **order})
        assert status == 400 and "ties are off" in reply["error"]
    out = tmp_path / "on.jsonl"
    with label_server(LabelConfig(candidates=str(candidates), out=str(out), annotator="ana", ties=True)) as url:
        item = call(f"{url}/api/next")[1]["item"]
        assert call(f"{url}/api/rankings", {"item": item, **order})[0] == 200
    (row,) = rows(out)
    assert (row["ranking"], row["ties"]) == ([1, 0, 2], [[0, 2]])


BAD_SUBMITS = [
    ({"item": "nope", "order": [[0], [1], [2]], "seconds": 1}, 404, "no item"),
    ({"order": [[0], [1], [2]], "seconds": 1}, 404, "no item"),
    ({"order": [[0], [1]], "seconds": 1}, 400, "each response 0..2 once"),
    ({"order": [[0], [1], [1]], "seconds": 1}, 400, "each response 0..2 once"),
    ({"order": [0, 1, 2], "seconds": 1}, 400, "list of tiers"),
    ({"order": [[0], [1], [True]], "seconds": 1}, 400, "list of tiers"),
    ({"order": [[0], [1], [2]], "seconds": -1}, 400, '"seconds"'),
    ({"order": [[0], [1], [2]], "seconds": "1"}, 400, '"seconds"'),
    ({"order": [[0], [1], [2]], "seconds": 1, "annotator": ""}, 400, "annotator name"),
    ({"order": [[0], [1], [2]], "seconds": 1, "annotator": "<img src=x>"}, 400, "annotator name"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_SUBMITS)
def test_bad_input_gets_a_4xx_with_a_message(tmp_path, candidates, body, status, message):
    with label_server(LabelConfig(candidates=str(candidates), out=str(tmp_path / "r.jsonl"))) as url:
        _, item = call(f"{url}/api/next?annotator=ana")
        body = {"annotator": "ana", **body}
        if "item" not in body and status != 404:
            body["item"] = item["item"]
        reply_status, reply = call(f"{url}/api/rankings", body)
        assert reply_status == status and message in reply["error"], reply


def test_malformed_requests_get_a_4xx_not_a_traceback(tmp_path, candidates):
    with label_server(LabelConfig(candidates=str(candidates), out=str(tmp_path / "r.jsonl"))) as url:
        for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b"x" * 70_000):
            status, reply = call(f"{url}/api/rankings", raw=raw)
            assert 400 <= status < 500 and reply["error"] and "Traceback" not in reply["error"]
        assert call(f"{url}/api/next")[0] == 400  # no annotator named
        assert call(f"{url}/api/nothing-here")[0] == 404
        assert call(f"{url}/api/next?annotator=ana", body={})[0] == 405


def test_tokens_name_the_annotators_and_everyone_else_is_refused(tmp_path, candidates):
    tokens = {"t" * 20: "ana", "u" * 20: "bo"}
    out = tmp_path / "r.jsonl"
    with label_server(LabelConfig(candidates=str(candidates), out=str(out)), tokens=tokens) as url:
        for path in ("/api/session", "/api/next?annotator=ana"):
            assert call(url + path)[0] == 401
            status, reply = call(url + path, token="x" * 20)
            assert status == 401 and reply["error"] == "unknown token"
        assert call(f"{url}/api/session", token="u" * 20)[1]["annotator"] == "bo"
        _, item = call(f"{url}/api/next?annotator=ana", token="u" * 20)  # the token, not the query, names them
        body = {"item": item["item"], "annotator": "ana", "order": [[0], [1], [2]], "seconds": 1}
        assert call(f"{url}/api/rankings", body)[0] == 401
        assert call(f"{url}/api/rankings", body, token="u" * 20)[0] == 200
    assert [r["annotator"] for r in rows(out)] == ["bo"]


def test_responses_sampled_from_a_policy_service_record_seed_and_weights_version(tmp_path, tiny_model_dir):
    from rlhf.core.server import ServerOptions, ServerThread
    from rlhf.label.serve import policy_sampler
    from rlhf.policy.service import PolicyService, PolicyServiceConfig

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    out = tmp_path / "r.jsonl"
    service = PolicyService(PolicyServiceConfig(model=str(tiny_model_dir), device="cpu"))
    with ServerThread(service, ServerOptions(port=0)) as port:
        config = LabelConfig(
            prompts=str(prompts), out=str(out), policy=f"127.0.0.1:{port}", k=3, max_new_tokens=6, seed=5
        )
        config.annotator = "ana"
        with label_server(config, sample=policy_sampler(config)) as url:
            _, first = call(f"{url}/api/next")
            assert len(first["responses"]) == 3 and call(f"{url}/api/next")[1] == first  # sampled once
            call(f"{url}/api/rankings", {"item": first["item"], "order": [[2], [1], [0]], "seconds": 1})
            _, second = call(f"{url}/api/next")
            call(f"{url}/api/rankings", {"item": second["item"], "order": [[0], [1], [2]], "seconds": 1})
    written = rows(out)
    assert [(r["seed"], r["weights_version"]) for r in written] == [(5, 0), (6, 0)]
    assert written[0]["responses"] == first["responses"]


def test_a_policy_that_cannot_be_reached_is_a_502_with_a_message(tmp_path):
    from rlhf.label.serve import policy_sampler
    from tests.helpers import free_port

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    config = LabelConfig(prompts=str(prompts), out=str(tmp_path / "r.jsonl"), policy=f"127.0.0.1:{free_port()}")
    config.annotator = "ana"
    with label_server(config, sample=policy_sampler(config)) as url:
        status, reply = call(f"{url}/api/next")
        assert status == 502 and "policy service" in reply["error"]


def test_prompts_pick_and_order_the_candidates(tmp_path, candidates, capsys):
    from rlhf.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (PROMPTS[2], PROMPTS[0])))
    config = LabelConfig(prompts=str(prompts), candidates=str(candidates), out=str(tmp_path / "r.jsonl"), annotator="a")
    with label_server(config) as url:
        assert call(f"{url}/api/next")[1]["responses"] == RESPONSES[2]
        assert call(f"{url}/api/next")[1]["remaining"] == 2
    prompts.write_text(json.dumps({"prompt": "unknown"}) + "\n")
    assert main(["label", "--prompts", str(prompts), "--candidates", str(candidates), "--out", config.out]) == 2
    assert "has no responses for prompt 'unknown'" in capsys.readouterr().err


def test_the_page_forbids_inline_and_foreign_script(tmp_path, candidates):
    import urllib.request

    with label_server(LabelConfig(candidates=str(candidates), out=str(tmp_path / "r.jsonl"))) as url:
        with urllib.request.urlopen(f"{url}/", timeout=30) as reply:
            policy, page = reply.headers["Content-Security-Policy"], reply.read().decode()
        with urllib.request.urlopen(f"{url}/static/label.js", timeout=30) as reply:
            script = reply.read().decode()
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert "<script>" not in page and "http" not in page  # one same-origin script file, no CDN
    assert "innerHTML" not in script and "textContent" in script


def test_a_failure_of_our_own_is_a_500_with_one_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    config = LabelConfig(prompts=str(prompts), out=str(tmp_path / "r.jsonl"), policy="unused:1", annotator="ana")

    def broken_sampler(item):
        raise RuntimeError("the sampler broke")

    with label_server(config, sample=broken_sampler) as url:
        status, reply = call(f"{url}/api/next")
    assert (status, reply) == (500, {"error": "internal error: RuntimeError: the sampler broke"})
