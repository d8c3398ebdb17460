"""Conversations -> token ids for Llama-3.x reward models.

A reward model scores the token ids of a whole conversation, so the ids must be exactly
the ones the model was trained on. Two formats are supported:

- the checkpoint's own chat template, when it ships one (`chat_template.jinja`, or
  `chat_template` in tokenizer_config.json). It is rendered the way HF transformers'
  `apply_chat_template` renders it (sandboxed Jinja2, trim_blocks and lstrip_blocks,
  `raise_exception`, special-token variables, add_generation_prompt=False) and the text
  is encoded with special-token parsing on, as transformers does. A consequence shared
  with transformers: a message whose text contains a control token such as
  "<|eot_id|>" is encoded as that control token.
- otherwise the built-in Llama-3.1 format: the output of Meta's Llama-3.1 chat template
  for tool-free conversations:

      <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n
      Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n{system}<|eot_id|>
      <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>   (each turn)

  (newlines shown as \\n; no line breaks between the pieces; the system block is always
  there, `{system}` is the stripped first message when its role is "system", else empty;
  every `{content}` is stripped). It is built directly as token ids: the control tokens
  come from a cache and each text piece is encoded with special-token parsing off, so
  message text that spells a control token stays text and cannot forge a turn. For
  ordinary text the ids equal encoding the rendered string (tests check this against
  transformers), because the tokenizer splits its input at control tokens before
  anything else and encodes the pieces between them independently.

Messages are validated first; problems raise `ConversationError` with a message that
says what to fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

__all__ = [
    "ROLES",
    "ChatFormatter",
    "ConversationError",
    "build_conversation",
    "json_type_name",
    "validate_conversation",
]

ROLES = ("system", "user", "assistant")

Message = dict[str, str]

# Llama-3 control tokens used by the built-in format.
BEGIN_OF_TEXT = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_TURN = "<|eot_id|>"

# The system block Meta's Llama-3.1 template always writes (tool-free case, default date).
SYSTEM_PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

# Special-token variables a chat template may read, as transformers passes them.
_TEMPLATE_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class ConversationError(ValueError):
    """A conversation that cannot be formatted; the message says what to fix."""


def json_type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def validate_conversation(messages: Any) -> list[Message]:
    """Check a conversation and return it as plain {"role", "content"} dicts.

    Rules: a non-empty list; each message an object with a string `role` (system, user or
    assistant) and a string `content`; a system message only as the first message. Other
    keys of a message are dropped.
    """
    if not isinstance(messages, list):
        raise ConversationError(
            f"a conversation must be an array of messages, got {json_type_name(messages)}"
        )
    if not messages:
        raise ConversationError("the conversation is empty: give at least one message")
    out: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConversationError(
                f"message {i} must be an object with 'role' and 'content', "
                f"got {json_type_name(message)}"
            )
        role = message.get("role")
        if not isinstance(role, str):
            what = _field_problem(message, "role")
            raise ConversationError(f"message {i} {what}: use one of {_roles_text()}")
        if role not in ROLES:
            raise ConversationError(
                f"message {i} has unknown role {role!r}: use one of {_roles_text()}"
            )
        if role == "system" and i != 0:
            raise ConversationError(
                f"message {i} has role 'system': only the first message may be a system message"
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise ConversationError(f"message {i} ({role}) {_field_problem(message, 'content')}")
        out.append({"role": role, "content": content})
    return out


def build_conversation(prompt: Any, response: Any) -> list[Message]:
    """The conversation a prompt/response pair stands for, validated.

    `prompt` is a string (one user message) or a list of messages; `response` becomes the
    final assistant message.
    """
    if isinstance(prompt, str):
        messages: list[Any] = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        if not prompt:
            raise ConversationError("'prompt' is an empty array: give a string or messages")
        messages = list(prompt)
    else:
        raise ConversationError(
            f"'prompt' must be a string or an array of messages, got {json_type_name(prompt)}"
        )
    if not isinstance(response, str):
        raise ConversationError(f"the response must be a string, got {json_type_name(response)}")
    messages.append({"role": "assistant", "content": response})
    return validate_conversation(messages)


class ChatFormatter:
    """Turns conversations into the token ids a Llama-3.x reward model reads.

    Construct with `from_pretrained(model_dir)`. `encode(messages)` formats one
    conversation, `encode_batch(conversations)` many at once (faster: the tokenizer
    encodes all text pieces in one parallel call).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ):
        self._tokenizer = tokenizer
        self._special_tokens = dict(special_tokens or {})
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template is not None else None
        if self._template is None:
            self._init_builtin()

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, *, chat_template: str | None = None):
        """Load tokenizer.json, tokenizer_config.json and any chat template from a checkpoint.

        `chat_template`, when given, overrides the checkpoint's template.
        """
        model_dir = os.fspath(model_dir)
        tokenizer_file = os.path.join(model_dir, "tokenizer.json")
        if not os.path.isfile(tokenizer_file):
            raise FileNotFoundError(
                f"{model_dir} has no tokenizer.json: copy the fast tokenizer file of the base "
                "model into the checkpoint directory"
            )
        config = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
        special_tokens = {}
        for name in _TEMPLATE_TOKEN_NAMES:
            token = _token_text(config.get(name))
            if token is not None:
                special_tokens[name] = token
        if chat_template is None:
            chat_template = _find_chat_template(model_dir, config)
        with open(tokenizer_file, "rb") as f:
            data = f.read()
        key = (hashlib.sha256(data).hexdigest(), tuple(sorted(special_tokens.items())),
               chat_template)  # fmt: skip
        return _shared_formatter(cls, key, data)

    @property
    def uses_builtin_format(self) -> bool:
        """True when the built-in Llama-3.1 format is used (the checkpoint has no template)."""
        return self._template is None

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def render(self, messages: Any) -> str:
        """The conversation as text, control tokens written out (for inspection)."""
        messages = validate_conversation(messages)
        if self._template is not None:
            return self._render_template(messages)
        bos = self._special_tokens.get("bos_token", BEGIN_OF_TEXT)
        parts = [bos, START_HEADER, "system", END_HEADER, "\n\n", SYSTEM_PREAMBLE]
        if messages[0]["role"] == "system":
            parts.append(messages[0]["content"].strip())
            messages = messages[1:]
        parts.append(END_OF_TURN)
        for m in messages:
            parts += [
                START_HEADER,
                m["role"],
                END_HEADER,
                "\n\n",
                m["content"].strip(),
                END_OF_TURN,
            ]
        return "".join(parts)

    def encode(self, messages: Any) -> list[int]:
        """Token ids of one conversation (a list of {"role", "content"} messages)."""
        return self.encode_batch([messages])[0]

    @staticmethod
    def conversation(prompt: Any, response: Any) -> list[Message]:
        """The validated conversation of `prompt` (string or messages) + assistant `response`."""
        return build_conversation(prompt, response)

    def encode_prompt_response(self, prompt: Any, response: Any) -> list[int]:
        """Token ids of `prompt` (string or messages) followed by the assistant `response`."""
        return self.encode(build_conversation(prompt, response))

    def encode_batch(self, conversations: Sequence[Any]) -> list[list[int]]:
        """Token ids of each conversation; raises ConversationError on the first bad one."""
        checked = [validate_conversation(c) for c in conversations]
        if not checked:
            return []
        if self._template is not None:
            texts = [self._render_template(c) for c in checked]
            return [e.ids for e in _encode_many(self._tokenizer, texts)]
        return self._encode_builtin(checked)

    # -- built-in Llama-3.1 format -------------------------------------------------------

    def _init_builtin(self) -> None:
        bos = self._special_tokens.get("bos_token", BEGIN_OF_TEXT)
        ids = {}
        for token in (bos, START_HEADER, END_HEADER, END_OF_TURN):
            ids[token] = self._tokenizer.token_to_id(token)
            if ids[token] is None:
                raise ValueError(
                    f"the tokenizer has no {token} token, so the built-in Llama-3.1 format "
                    "cannot be used; give the checkpoint a chat_template in tokenizer_config.json"
                )
        # Text pieces are encoded with special-token parsing off (see the module docstring).
        self._text_tokenizer = Tokenizer.from_str(self._tokenizer.to_str())
        self._text_tokenizer.encode_special_tokens = True
        self._bos_id = ids[bos]
        self._eot_id = ids[END_OF_TURN]
        self._header_ids = {
            role: [ids[START_HEADER], *self._encode_text([role])[0], ids[END_HEADER]]
            for role in ROLES
        }
        system_prefix = [self._bos_id, *self._header_ids["system"]]
        self._bare_system_block = [
            *system_prefix,
            *self._encode_text(["\n\n" + SYSTEM_PREAMBLE])[0],
            self._eot_id,
        ]
        self._system_prefix = system_prefix

    def _encode_text(self, pieces: list[str]) -> list[list[int]]:
        return [e.ids for e in _encode_many(self._text_tokenizer, pieces)]

    def _encode_builtin(self, conversations: list[list[Message]]) -> list[list[int]]:
        # One tokenizer call for every text piece of every conversation. Each piece is the
        # exact text between two control tokens of the rendered conversation.
        pieces: list[str] = []
        for messages in conversations:
            if messages[0]["role"] == "system":
                pieces.append("\n\n" + SYSTEM_PREAMBLE + messages[0]["content"].strip())
                messages = messages[1:]
            pieces.extend("\n\n" + m["content"].strip() for m in messages)
        encoded = iter(self._encode_text(pieces))
        eot = self._eot_id
        out = []
        for messages in conversations:
            if messages[0]["role"] == "system":
                ids = [*self._system_prefix, *next(encoded), eot]
                messages = messages[1:]
            else:
                ids = list(self._bare_system_block)
            for m in messages:
                ids += self._header_ids[m["role"]]
                ids += next(encoded)
                ids.append(eot)
            out.append(ids)
        return out

    # -- checkpoint chat template --------------------------------------------------------

    def _render_template(self, messages: list[Message]) -> str:
        try:
            return self._template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=False,
                **self._special_tokens,
            )
        except jinja2.TemplateError as exc:
            raise ConversationError(
                f"the model's chat template rejected the conversation: {exc}"
            ) from exc


@functools.lru_cache(maxsize=8)
def _shared_formatter(cls, key, data: bytes) -> ChatFormatter:
    """One formatter per tokenizer content and template: engines of the same model (an
    engine directory holds a copy of its checkpoint's tokenizer) share it, since
    loading a 128k-token vocabulary twice (plain and special-tokens-as-text) costs
    about a second. Formatters are read-only after construction."""
    _, special_tokens, chat_template = key
    return cls(Tokenizer.from_str(data.decode("utf-8")), chat_template=chat_template,
               special_tokens=dict(special_tokens))  # fmt: skip


def _field_problem(message: dict, key: str) -> str:
    if key not in message:
        return f"has no '{key}'"
    return f"has a '{key}' that is {json_type_name(message[key])}, not a string"


def _roles_text() -> str:
    return ", ".join(repr(r) for r in ROLES)


def _encode_many(tokenizer: Tokenizer, texts: list[str]):
    # encode_batch_fast skips offset tracking (tokenizers >= 0.20); ids are identical.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return encode(texts, add_special_tokens=False)


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json stores a token as a string or as {"content": ..., ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _find_chat_template(model_dir: str, config: dict[str, Any]) -> str | None:
    """The checkpoint's chat template: chat_template.jinja (newer transformers saves it
    there) before tokenizer_config.json's `chat_template` (a string, or a list of named
    templates of which "default" is used)."""
    path = os.path.join(model_dir, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(
                f"tokenizer_config.json in {model_dir} lists chat templates "
                f"{sorted(map(str, named))} but none named 'default'"
            )
        template = named["default"]
    if template is not None and not isinstance(template, str):
        raise ValueError(f"tokenizer_config.json in {model_dir}: chat_template must be a string")
    return template


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    some templates; scoring does not need the marks, so the body renders unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Like transformers: no HTML escaping (Jinja's own tojson escapes <, >, &, ').
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _compile_template(source: str) -> jinja2.Template:
    """Compile a checkpoint chat template in the environment transformers renders it in."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"the chat template is not valid Jinja2: {exc}") from exc
