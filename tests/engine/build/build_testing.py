"""Shared by the builder's tests."""

CALIBRATION = [
    {"prompt": "What is 2 + 2?", "responses": ["4", "It is four.", "5", "Bananas are yellow."]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
     "responses": ["Hello!", "Hi, how can I help you today?", "Goodbye."]},
    {"messages": [{"role": "user", "content": "Name a prime."},
                  {"role": "assistant", "content": "Seven is prime."}]},
]  # fmt: skip
