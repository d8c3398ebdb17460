"""Parsing scoring input lines (engine.jsonl): the three forms, ids, and bad lines."""

from __future__ import annotations

import json

import pytest
from chat_messages import assistant, system, user

from engine.jsonl import InputLine, parse_line, parse_record


def parse(record, line=1) -> InputLine:
    item = parse_line(json.dumps(record), line)
    assert item is not None
    return item


def test_messages_form():
    item = parse({"messages": [system("s"), user("u"), assistant("a")]}, line=4)
    assert item.error is None
    assert item.line == 4 and not item.many and not item.has_id
    assert item.conversations == [[system("s"), user("u"), assistant("a")]]
    assert item.output([0.5]) == {"line": 4, "reward": 0.5}


def test_prompt_response_form():
    item = parse({"prompt": "Q", "response": "A"})
    assert item.conversations == [[user("Q"), assistant("A")]]
    assert not item.many


def test_prompt_messages_response_form():
    prompt = [system("s"), user("q1"), assistant("a1"), user("q2")]
    item = parse({"prompt": prompt, "response": "a2"})
    assert item.conversations == [[*prompt, assistant("a2")]]


def test_responses_form():
    item = parse({"id": "x", "prompt": "Q", "responses": ["A", "B", "C"]})
    assert item.many
    assert item.conversations == [[user("Q"), assistant(r)] for r in "ABC"]
    assert item.output([1.0, 2.0, 3.0]) == {"id": "x", "line": 1, "rewards": [1.0, 2.0, 3.0]}


@pytest.mark.parametrize("id_value", [0, "a", None, [1, 2], {"k": "v"}, 1.5, False])
def test_any_id_is_carried(id_value):
    item = parse({"id": id_value, "prompt": "Q", "response": "A"}, line=9)
    assert item.has_id and item.id == id_value
    assert list(item.output([0.25])) == ["id", "line", "reward"]
    assert item.output([0.25])["id"] == id_value


def test_id_is_carried_on_errors():
    item = parse({"id": 3, "prompt": "Q"}, line=2)
    assert item.error is not None
    assert item.output() == {"id": 3, "line": 2, "error": item.error}


def test_extra_keys_are_ignored():
    item = parse({"prompt": "Q", "response": "A", "source": "web", "score": 3})
    assert item.error is None


def test_multi_attribute_reward_is_kept_as_list():
    item = parse({"prompt": "Q", "response": "A"})
    assert item.output([[0.1, 0.2]]) == {"line": 1, "reward": [0.1, 0.2]}


@pytest.mark.parametrize("raw", ["", "\n", "   \t \r\n", b"  \n"])
def test_blank_lines_are_skipped(raw):
    assert parse_line(raw, 3) is None


def test_bytes_with_bom_and_crlf():
    raw = b'\xef\xbb\xbf{"prompt": "Q", "response": "A"}\r\n'
    item = parse_line(raw, 1)
    assert item.error is None


def test_invalid_utf8():
    item = parse_line(b'{"prompt": "\xff", "response": "A"}\n', 5)
    assert item.line == 5
    assert item.error == "the line is not valid UTF-8 (byte 13)"


BAD = [
    ('{"prompt": "Q", "response": "A"', "invalid JSON: Expecting ',' delimiter"),
    ("nonsense", "invalid JSON: Expecting value (column 1)"),
    ("[1, 2]", "a line must be a JSON object, got an array"),
    ('"text"', "a line must be a JSON object, got a string"),
    ("{}", "unknown input form (keys: none)"),
    ('{"text": "x", "label": 1}', "unknown input form (keys: 'text', 'label')"),
    ('{"question": "Q", "response": "A"}', "'response' needs a 'prompt'"),
    ('{"responses": ["A"]}', "'responses' needs a 'prompt'"),
    ('{"prompt": "Q"}', "'prompt' needs a 'response' (a string) or 'responses'"),
    ('{"prompt": "Q", "response": "A", "responses": ["B"]}', "either 'response' or 'responses'"),
    ('{"messages": [], "prompt": "Q"}', "either 'messages' or 'prompt', not both ('prompt')"),
    ('{"prompt": 5, "response": "A"}', "'prompt' must be a string or an array of messages"),
    ('{"prompt": [], "response": "A"}', "'prompt': the conversation is empty"),
    ('{"prompt": "Q", "response": null}', "'response' must be a string, got null"),
    (
        '{"prompt": "Q", "responses": "A"}',
        "'responses' must be a non-empty array of strings, got a",
    ),
    (
        '{"prompt": "Q", "responses": []}',
        "'responses' must be a non-empty array of strings, got an",
    ),
    ('{"prompt": "Q", "responses": ["A", 2]}', "'responses'[1] must be a string, got a number"),
    ('{"messages": "hi"}', "'messages': a conversation must be an array of messages"),
    ('{"messages": []}', "'messages': the conversation is empty"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "'messages': message 0 has unknown role"),
    ('{"messages": [{"role": "user"}]}', "'messages': message 0 (user) has no 'content'"),
    (
        '{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}',
        "'messages': message 1 has role 'system': only the first message",
    ),
    ('{"prompt": [{"role": "tool", "content": "x"}], "response": "A"}', "'prompt': message 0"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_lines(text, message):
    item = parse_line(text, 7)
    assert item is not None and item.line == 7
    assert item.error is not None
    assert item.conversations == []
    assert item.output() == {
        **({"id": item.id} if item.has_id else {}),
        "line": 7,
        "error": item.error,
    }
    assert message in item.error


def test_parse_record_accepts_decoded_values():
    assert parse_record({"prompt": "Q", "response": "A"}, 2).conversations == [
        [user("Q"), assistant("A")]
    ]
