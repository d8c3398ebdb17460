"""One router per API family; ``ROUTERS`` is the order they are mounted in."""

from . import chat, classify, health, openrlhf, score, tokenize

ROUTERS = [health.router, chat.router, score.router, openrlhf.router, classify.router,
           tokenize.router]  # fmt: skip
