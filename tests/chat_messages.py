"""Chat messages for tests: user("hi") -> {"role": "user", "content": "hi"}."""


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}
