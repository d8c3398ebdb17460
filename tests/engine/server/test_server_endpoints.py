"""Every endpoint against a real server process, with the client each one is for
(`openai`, `requests` as OpenRLHF and verl post, httpx, the project's RewardClient);
rewards must equal RewardEngine.score on the same inputs."""

from __future__ import annotations

import asyncio
import math

import httpx
import openai
import pytest
import requests
from server_testing import API_KEY, MODEL_NAME, assert_close

from engine.client import RewardClient, RewardItemError, reward_function


def conv(prompt: str, response: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt},
            {"role": "assistant", "content": response}]  # fmt: skip


CONVERSATIONS = [
    conv("What is 2+2?", "4"),
    conv("What is 2+2?", "5, I think."),
    conv("Name a prime.", "Seven.", system="Answer briefly."),
    conv("Écris un haïku.", "Le vent d'automne / ... 🍂"),
]


# -- NIM / OpenAI ------------------------------------------------------------------------


def test_openai_client_reads_the_nim_reward(server, reference):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
    for messages in CONVERSATIONS:
        out = client.chat.completions.create(model=MODEL_NAME, messages=messages)
        expected = reference.score([messages])[0]
        assert out.object == "chat.completion"
        assert out.model == MODEL_NAME
        name, _, value = out.choices[0].message.content.partition(":")
        assert name == "reward"
        assert_close([float(value)], [expected])
        [entry] = out.choices[0].logprobs.content
        assert entry.token == "reward" and entry.logprob == float(value)
        assert out.usage.prompt_tokens == len(reference.chat.encode(messages))
        assert out.usage.total_tokens == out.usage.prompt_tokens


def test_openai_client_gets_a_400_without_an_assistant_turn(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL_NAME,
                                       messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert "last message must be the assistant" in err.value.body["message"]
    assert err.value.body["code"] == "no_assistant_turn"


def test_chat_content_parts_are_joined(server, reference):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is "},
                                             {"type": "text", "text": "2+2?"}]},
                {"role": "assistant", "content": "4"}]  # fmt: skip
    r = server.post("/v1/chat/completions", {"messages": messages})
    assert r.status_code == 200, r.text
    value = float(r.json()["choices"][0]["message"]["content"].split(":")[1])
    assert_close([value], reference.score([CONVERSATIONS[0]]))


def test_stream_is_refused(server):
    r = server.post("/v1/chat/completions", {"messages": CONVERSATIONS[0], "stream": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "stream_unsupported"


# -- /v1/score -------------------------------------------------------------------------------


def test_score_conversations(server, reference):
    r = server.post("/v1/score", {"conversations": CONVERSATIONS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_close(body["rewards"], reference.score(CONVERSATIONS))
    tokens = sum(len(ids) for ids in reference.chat.encode_batch(CONVERSATIONS))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens,
                             "items": 4, "errors": 0}  # fmt: skip


def test_score_prompt_and_responses(server, reference):
    responses = ["4", "four", "5", "It is 4."]
    r = server.post("/v1/score", {"prompt": "What is 2+2?", "responses": responses})
    assert r.status_code == 200, r.text
    assert_close(r.json()["rewards"], reference.score_responses("What is 2+2?", responses))


def test_score_token_ids(server, reference):
    seqs = [[128000, 9906, 1917], list(range(1000, 1100)), [5]]
    r = server.post("/v1/score", {"token_ids": seqs})
    assert r.status_code == 200, r.text
    assert_close(r.json()["rewards"], reference.score_token_ids(seqs))


def test_bad_items_get_errors_and_neighbours_are_scored(server, reference):
    good = CONVERSATIONS[0]
    items = [
        good,
        [{"role": "wizard", "content": "hi"}],
        [],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}],
        CONVERSATIONS[1],
    ]
    r = server.post("/v1/score", {"conversations": items})
    assert r.status_code == 200, r.text
    rewards = r.json()["rewards"]
    assert_close([rewards[0], rewards[4]], reference.score([good, CONVERSATIONS[1]]))
    assert "unknown role 'wizard'" in rewards[1]["error"]["message"]
    assert "item 1" in rewards[1]["error"]["message"]
    assert "empty" in rewards[2]["error"]["message"]
    assert "only the first message may be a system" in rewards[3]["error"]["message"]
    assert r.json()["usage"]["errors"] == 3


def test_bad_token_id_items(server, reference):
    too_long = [1] * (reference.max_model_len + 1)
    items = [[1, 2, 3], [], [1, -1], [1, 10**30], too_long, [4, 5]]
    r = server.post("/v1/score", {"token_ids": items}, headers={})
    assert r.status_code == 200, r.text
    rewards = r.json()["rewards"]
    assert_close([rewards[0], rewards[5]], reference.score_token_ids([[1, 2, 3], [4, 5]]))
    codes = [rewards[i]["error"]["code"] for i in (1, 2, 3, 4)]
    assert codes == ["empty", "invalid_token_ids", "invalid_token_ids", "too_long"]
    message = rewards[4]["error"]["message"]
    assert "item 4" in message and str(len(too_long)) in message
    assert str(reference.max_model_len) in message


@pytest.mark.parametrize("body, code", [
    ({}, "invalid_form"),
    ({"conversations": [CONVERSATIONS[0]], "token_ids": [[1]]}, "invalid_form"),
    ({"responses": ["a"]}, "invalid_form"),
    ({"prompt": "a"}, "invalid_form"),
    ({"prompt": [], "responses": ["a"]}, "invalid_conversation"),
    ({"prompt": [{"role": "assistant", "content": "a"}, {"role": "system", "content": "b"}],
      "responses": ["x"]}, "invalid_conversation"),
])  # fmt: skip
def test_request_level_problems_are_400(server, body, code):
    r = server.post("/v1/score", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code


# -- OpenRLHF --------------------------------------------------------------------------------


def test_openrlhf_get_reward(server, reference):
    """OpenRLHF posts with requests (remote_rm_utils.request_api_wrapper); the queries are
    chat-formatted text, with or without the leading BOS."""
    texts = [reference.chat.render(c) for c in CONVERSATIONS]
    texts[1] = texts[1].removeprefix("<|begin_of_text|>")  # a BOS is added only when absent
    payload = {"query": texts, "prompts": ["p"] * 4, "labels": ["l"] * 4}
    r = requests.post(server.url + "/get_reward", json=payload, headers=server.headers,
                      timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert_close(body["rewards"], reference.score(CONVERSATIONS))
    assert body["scores"] == body["rewards"] and body["extra_logs"] == {}


def test_openrlhf_empty_slice_and_too_long_query(server, reference):
    r = server.post("/get_reward", {"query": []})
    assert r.status_code == 200 and r.json()["rewards"] == []
    long_text = "hello " * (reference.max_model_len + 10)
    r = server.post("/get_reward", {"query": ["hi", long_text]})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "query[1]" in message and str(reference.max_model_len) in message


# -- vLLM classify (verl) ----------------------------------------------------------------------


def test_classify_as_verl_calls_it(server, reference):
    """verl strips the BOS from the chat-formatted text and sends activation=false; it
    reads data[-1]['probs'][-1] as the reward."""
    text = reference.chat.render(CONVERSATIONS[2]).removeprefix("<|begin_of_text|>")
    for flag in ("activation", "use_activation"):
        payload = {"model": "whatever/path", "input": text, flag: False}
        r = requests.post(server.url + "/classify", json=payload, headers=server.headers,
                          timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "list" and out["data"][0]["num_classes"] == 1
        assert_close([out["data"][-1]["probs"][-1]], reference.score([CONVERSATIONS[2]]))


def test_classify_activation_texts_ids_and_messages(server, reference):
    expected = reference.score(CONVERSATIONS[:2])
    ids = reference.chat.encode_batch(CONVERSATIONS[:2])
    texts = [reference.chat.render(c) for c in CONVERSATIONS[:2]]
    for given in (texts, ids):
        r = server.post("/classify", {"input": given, "use_activation": False})
        assert r.status_code == 200, r.text
        assert_close([d["probs"][0] for d in r.json()["data"]], expected)
        assert [d["index"] for d in r.json()["data"]] == [0, 1]
    r = server.post("/classify", {"input": ids[0]})  # activation on by default: sigmoid
    sigmoid = 1 / (1 + math.exp(-expected[0]))
    assert_close([r.json()["data"][0]["probs"][0]], [sigmoid])
    r = server.post("/classify", {"messages": CONVERSATIONS[0], "use_activation": False})
    assert_close([r.json()["data"][0]["probs"][0]], expected[:1])
    assert r.json()["usage"]["prompt_tokens"] == len(ids[0])


# -- tokenize, models, schema ----------------------------------------------------------------


def test_tokenize_matches_scoring(server, reference):
    chat = reference.chat
    c = CONVERSATIONS[3]
    r = server.post("/v1/tokenize", {"messages": c})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["token_ids"] == chat.encode(c)
    assert out["text"] == chat.render(c)
    assert out["count"] == len(out["token_ids"]) == len(out["tokens"])
    assert out["max_model_len"] == reference.max_model_len
    assert out["tokens"][0] == "<|begin_of_text|>"
    assert "".join(out["tokens"]).startswith("<|begin_of_text|><|start_header_id|>system")
    r = server.post("/v1/tokenize", {"prompt": c[0]["content"], "response": c[1]["content"]})
    assert r.json()["token_ids"] == chat.encode(c[:2])
    r = server.post("/v1/tokenize", {"text": chat.render(c).removeprefix("<|begin_of_text|>")})
    assert r.json()["token_ids"] == chat.encode(c) and r.json()["text"] == chat.render(c)
    r = server.post("/v1/tokenize", {"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and "unknown role 'robot'" in r.json()["error"]["message"]


def test_models(server, reference, rm_dir):
    r = server.get("/v1/models")
    assert r.status_code == 200
    [card] = r.json()["data"]
    assert card["id"] == MODEL_NAME and card["root"] == str(rm_dir)
    assert card["labels"] == ["reward"] and card["num_labels"] == 1
    assert card["max_model_len"] == reference.max_model_len and card["dtype"] == "float32"
    listed = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY).models.list()
    assert [m.id for m in listed.data] == [MODEL_NAME]


def test_openapi_lists_every_endpoint(server):
    schema = server.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/score", "/get_reward", "/classify",
                 "/v1/tokenize", "/v1/models", "/v1/health/live", "/v1/health/ready",
                 "/health", "/metrics"):  # fmt: skip
        assert path in schema["paths"], path
    score = schema["paths"]["/v1/score"]["post"]
    assert {"400", "413", "503", "504"} <= set(score["responses"])
    assert "422" not in score["responses"]  # validation errors are answered 400


def test_health(server):
    for path in ("/v1/health/live", "/v1/health/ready", "/health"):
        r = httpx.get(server.url + path)  # no API key needed
        assert r.status_code == 200
    assert httpx.get(server.url + "/v1/health/ready").json() == {"status": "ready"}


# -- the project's client ----------------------------------------------------------------------


def test_reward_client_sync_and_async(server, reference):
    with RewardClient(server.url, api_key=API_KEY) as client:
        assert_close(client.score(CONVERSATIONS), reference.score(CONVERSATIONS))
        assert_close(client.score(prompt="2+2?", responses=["4", "5"]),
                     reference.score_responses("2+2?", ["4", "5"]))  # fmt: skip
        assert client.models()["id"] == MODEL_NAME

        async def both():
            got = await asyncio.gather(client.ascore(CONVERSATIONS[:2]),
                                       client.ascore(token_ids=[[1, 2, 3]]))  # fmt: skip
            await client.aclose()
            return got

        convs, ids = asyncio.run(both())
        assert_close(convs, reference.score(CONVERSATIONS[:2]))
        assert_close(ids, reference.score_token_ids([[1, 2, 3]]))
        with pytest.raises(RewardItemError, match="item 1"):
            client.score([CONVERSATIONS[0], [{"role": "wizard", "content": "x"}]])
        mixed = client.score([CONVERSATIONS[0], []], return_errors=True)
        assert isinstance(mixed[0], float) and mixed[1]["error"]["code"] == "invalid_conversation"


def test_trl_reward_function_both_dataset_forms(server, reference):
    reward_func = reward_function(server.url, api_key=API_KEY)
    prompts = ["What is 2+2?", "Name a prime."]
    completions = ["4", "Seven."]
    expected = reference.score([conv(p, c) for p, c in zip(prompts, completions, strict=True)])
    assert_close(reward_func(prompts=prompts, completions=completions), expected)
    conv_prompts = [[{"role": "user", "content": p}] for p in prompts]
    conv_completions = [[{"role": "assistant", "content": c}] for c in completions]
    got = reward_func(prompts=conv_prompts, completions=conv_completions, trainer_state=None)
    assert_close(got, expected)
    assert all(isinstance(x, float) for x in got)


# -- many clients at once ----------------------------------------------------------------------


def test_concurrent_clients_get_their_own_rewards(server, reference):
    convs = [conv(f"Question {i}?", f"Answer number {i * 7}.") for i in range(40)]
    expected = reference.score(convs)

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers,
                                     timeout=60) as client:  # fmt: skip

            async def one(i):
                if i % 2:
                    r = await client.post("/v1/score", json={"conversations": [convs[i]]})
                    return r.json()["rewards"][0]
                r = await client.post("/v1/chat/completions", json={"messages": convs[i]})
                return float(r.json()["choices"][0]["message"]["content"].split(":")[1])

            return await asyncio.gather(*(one(i) for i in range(len(convs))))

    assert_close(asyncio.run(run()), expected)
