"""Authentication, size limits, bad input of every kind, metrics and the request log,
against the main server process."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from server_testing import MAX_ITEMS, MAX_REQUEST_BYTES

NOT_UTF8 = b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'
BAD_BYTE = NOT_UTF8.index(b"\xff") + 1  # 1-based, as the error message counts
HI = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def raw_post(server, path, content: bytes, headers=None):
    headers = {**server.headers, "Content-Type": "application/json", **(headers or {})}
    return httpx.post(server.url + path, content=content, headers=headers, timeout=60)


def assert_error(r: httpx.Response, status: int, code: str | None = None, says: str = ""):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code"}
    if code is not None:
        assert error["code"] == code, error
    assert says in error["message"], error


# -- API key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/score", "/v1/chat/completions", "/get_reward",
                                  "/classify", "/v1/tokenize"])  # fmt: skip
def test_missing_or_wrong_api_key_is_401(server, path):
    r = httpx.post(server.url + path, json={"messages": HI})
    assert_error(r, 401, "missing_api_key", "Authorization: Bearer")
    r = httpx.post(server.url + path, json={"messages": HI},
                   headers={"Authorization": "Bearer wrong"})  # fmt: skip
    assert_error(r, 401, "invalid_api_key")
    r = httpx.post(server.url + path, json={"messages": HI},
                   headers={"Authorization": f"Basic {server.api_key}"})  # fmt: skip
    assert_error(r, 401, "missing_api_key")


def test_models_and_metrics_need_the_key_health_does_not(server):
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/v1/health/ready").status_code == 200
    assert httpx.get(server.url + "/openapi.json").status_code == 200


# -- limits ------------------------------------------------------------------------------------


def test_body_over_max_request_bytes_is_413(server):
    big = json.dumps({"token_ids": [[1] * (MAX_REQUEST_BYTES // 3)]}).encode()
    assert len(big) > MAX_REQUEST_BYTES
    assert_error(raw_post(server, "/v1/score", big), 413, "body_too_large",
                 str(MAX_REQUEST_BYTES))  # fmt: skip

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for _ in range(4):
            yield big[: len(big) // 3]

    r = httpx.post(server.url + "/v1/score", content=chunks(), headers=server.headers)
    assert_error(r, 413, "body_too_large")


@pytest.mark.parametrize("path, body", [
    ("/v1/score", {"token_ids": [[1]] * (MAX_ITEMS + 1)}),
    ("/v1/score", {"prompt": "p", "responses": ["r"] * (MAX_ITEMS + 1)}),
    ("/v1/score", {"conversations": [HI] * (MAX_ITEMS + 1)}),
    ("/get_reward", {"query": ["q"] * (MAX_ITEMS + 1)}),
    ("/classify", {"input": ["q"] * (MAX_ITEMS + 1)}),
])  # fmt: skip
def test_more_than_max_items_is_413(server, path, body):
    assert_error(server.post(path, body), 413, "too_many_items", f"limit of {MAX_ITEMS}")


def test_too_long_sequence_is_400_naming_both_lengths(server, reference):
    limit = reference.max_model_len
    long_ids = [1] * (limit + 5)
    r = server.post("/classify", {"input": [[1, 2], long_ids], "use_activation": False})
    assert_error(r, 400, "too_long", f"input[1] is {limit + 5} tokens long")
    assert str(limit) in r.json()["error"]["message"]
    messages = [{"role": "user", "content": "word " * limit}, HI[1]]
    r = server.post("/v1/chat/completions", {"messages": messages})
    assert_error(r, 400, "too_long", f"maximum length of {limit}")


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content, code, says", [
    (b"{not json", "invalid_json", "not valid JSON"),
    (b"", "invalid_request", "body is missing"),
    (NOT_UTF8, "invalid_utf8", f"byte {BAD_BYTE}"),
    (b"[1, 2, 3]", "invalid_request", "valid dictionary"),
    (b'{"messages": "hello"}', "invalid_request", "messages"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "invalid_request", "content"),
    (b'{"messages": [{"role": "user"}]}', "invalid_request", "missing"),
    (b'{"messages": []}', "invalid_request", "messages"),
    (b'{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "invalid_conversation", "unknown role 'tool'"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "invalid_request",
     "stream"),
])  # fmt: skip
def test_bad_chat_bodies_are_400_with_a_reason(server, content, code, says):
    assert_error(raw_post(server, "/v1/chat/completions", content), 400, code, says)


@pytest.mark.parametrize("body, says", [
    ({"token_ids": [[1, 2.5]]}, "token_ids"),
    ({"token_ids": [[1, True]]}, "token_ids"),
    ({"token_ids": "1 2 3"}, "token_ids"),
    ({"conversations": [[{"role": 1, "content": "x"}]]}, "role"),
    ({"prompt": 7, "responses": ["x"]}, "prompt"),
    ({"query": "not a list"}, None),
])  # fmt: skip
def test_wrong_types_are_400(server, body, says):
    path = "/get_reward" if "query" in body else "/v1/score"
    r = server.post(path, body)
    assert_error(r, 400, "invalid_request", says or "query")


def test_huge_numbers_and_unknown_routes(server):
    r = raw_post(server, "/v1/score", b'{"token_ids": [[1e400]]}')
    assert_error(r, 400, "invalid_request")
    r = raw_post(server, "/classify", b'{"input": [[123456789012345678901234567890]]}')
    assert_error(r, 400, "invalid_token_ids", "outside [0, ")
    assert_error(server.post("/v1/nothing", {}), 404, "not_found")
    assert_error(server.get("/v1/score"), 405, "method_not_allowed")


def test_curl_style_form_content_type_is_read_as_json(server, reference):
    r = httpx.post(server.url + "/v1/score", content=json.dumps({"token_ids": [[1, 2]]}),
                   headers={**server.headers,
                            "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert abs(r.json()["rewards"][0] - reference.score_token_ids([[1, 2]])[0]) < 1e-4


# -- metrics and the request log ----------------------------------------------------------------


def test_metrics_count_known_traffic(server, reference):
    seqs = [list(range(2000, 2000 + n)) for n in (17, 33, 50)]  # shares no prefix with others
    before = server.metrics()
    assert server.post("/v1/score", {"token_ids": seqs}).status_code == 200
    assert server.post("/v1/score", {"token_ids": [[1] * 5]}, headers={"Authorization": "x"}
                       ).status_code == 401  # fmt: skip
    after = server.metrics()

    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    route = 'route="/v1/score"'
    assert delta(f'reward_engine_http_requests_total{{{route},status="200"}}') == 1
    assert delta(f'reward_engine_http_requests_total{{{route},status="401"}}') == 1
    assert delta('reward_engine_http_errors_total{kind="missing_api_key"}') == 1
    assert delta(f"reward_engine_http_items_total{{{route}}}") == 3
    assert delta(f"reward_engine_http_prompt_tokens_total{{{route}}}") == 100
    assert delta("reward_engine_sequences_finished_total") == 3
    assert delta("reward_engine_tokens_requested_total") == 100
    assert 0 < delta("reward_engine_tokens_computed_total") <= 100
    assert delta(f"reward_engine_http_request_duration_seconds_count{{{route}}}") == 2
    assert delta("reward_engine_step_duration_seconds_count") >= 1
    assert after["reward_engine_requests_waiting"] == 0
    assert after["reward_engine_requests_running"] == 0
    assert after["reward_engine_kv_blocks_used"] == 0
    assert after["reward_engine_queue_capacity"] == 1024
    assert after["reward_engine_kv_blocks_total"] > 0
    assert 0 <= after["reward_engine_prefix_cache_hit_rate"] <= 1


def test_prefix_cache_hits_show_in_metrics(server):
    prompt = list(range(3000, 3000 + 64))
    seqs = [prompt + [10 + i] for i in range(4)]
    server.post("/v1/score", {"token_ids": seqs[:1]})
    before = server.metrics()
    server.post("/v1/score", {"token_ids": seqs[1:]})
    after = server.metrics()
    hits = after["reward_engine_prefix_cache_hit_tokens_total"]
    assert hits - before["reward_engine_prefix_cache_hit_tokens_total"] >= 3 * 64


def test_one_log_line_per_request(server):
    server.post("/v1/score", {"token_ids": [[7] * 11, [8] * 12]})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [x for x in server.log_text().splitlines() if "POST /v1/score 200 items=2 "
                 "tokens=23 " in x]  # fmt: skip
        if lines:
            assert lines[-1].rstrip().endswith("ms")
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"no log line for the request:\n{server.log_text()[-2000:]}")
    banner = server.log_text()
    assert "serving " in banner and "dtype float32" in banner and "KV pool" in banner
    assert server.url in banner
