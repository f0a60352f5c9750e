"""Refused requests raise the openai client's matching exception classes, with OpenAI's error
type and code."""

import openai

from common import check, check_eq, client, parse_args


def expect(exc_class, call, status, code=None, param=None):
    try:
        call()
    except exc_class as e:
        check_eq(e.status_code, status, f"{exc_class.__name__} status")
        if code is not None:
            check_eq(e.code, code, f"{exc_class.__name__} code")
        if param is not None:
            check_eq(e.param, param, f"{exc_class.__name__} param")
        check(isinstance(e.body, dict) and e.body.get("message"), f"error body {e.body!r}")
        print(f"  {exc_class.__name__} ({status}, {e.code}): {e.body['message'][:100]}")
        return
    except openai.APIStatusError as e:
        raise AssertionError(f"expected {exc_class.__name__}, got {type(e).__name__} {e.status_code}: {e.body}")
    raise AssertionError(f"expected {exc_class.__name__}, the call succeeded")


def main():
    args = parse_args()
    c = client(args)
    model = args.model
    hi = [{"role": "user", "content": "Hi"}]

    # Bad parameters: 400.
    expect(openai.BadRequestError, lambda: c.chat.completions.create(model=model, messages=hi, n=2), 400, "invalid_value", "n")
    expect(
        openai.BadRequestError,
        lambda: c.chat.completions.create(model=model, messages=hi, temperature=5),
        400,
        "invalid_value",
        "temperature",
    )
    expect(openai.BadRequestError, lambda: c.chat.completions.create(model=model, messages=[]), 400, param="messages")
    expect(
        openai.BadRequestError,
        lambda: c.chat.completions.create(model=model, messages=hi, extra_body={"top_k": "many"}),
        400,
        "invalid_type",
        "top_k",
    )
    expect(
        openai.BadRequestError,
        lambda: c.completions.create(model=model, prompt="x", max_tokens=4, stop=[""]),
        400,
        param="stop",
    )
    long = "hello " * 5000
    expect(
        openai.BadRequestError,
        lambda: c.chat.completions.create(model=model, messages=[{"role": "user", "content": long}]),
        400,
        "context_length_exceeded",
        "messages",
    )
    expect(
        openai.BadRequestError,
        lambda: c.completions.create(model=model, prompt=long, stream=True),
        400,
        "context_length_exceeded",
        "prompt",
    )

    # A wrong key: 401.
    bad_key = client(args, api_key="wrong")
    expect(openai.AuthenticationError, lambda: bad_key.chat.completions.create(model=model, messages=hi), 401, "invalid_api_key")
    expect(openai.AuthenticationError, lambda: bad_key.models.list(), 401)

    # A model that is not served: 404.
    expect(
        openai.NotFoundError,
        lambda: c.chat.completions.create(model="gpt-4o", messages=hi, max_tokens=2),
        404,
        "model_not_found",
        "model",
    )
    expect(openai.NotFoundError, lambda: c.completions.create(model="gpt-4o", prompt="x"), 404, "model_not_found")
    expect(openai.NotFoundError, lambda: c.models.retrieve("gpt-4o"), 404, "model_not_found")

    # A host name the server does not answer to (DNS rebinding): 403.
    rebound = client(args, default_headers={"Host": "evil.example"})
    expect(openai.PermissionDeniedError, lambda: rebound.models.list(), 403, "host_not_allowed")

    # A full queue: 429. The server has one slot and no queue: a long stream takes the slot
    # (an idle server runs a request even with no queue), then nothing more gets in.
    if args.full_base_url:
        full = client(args, base_url=args.full_base_url)
        # Greedy, and no end-of-generation token stops it while the checks run.
        held = full.completions.create(
            model=model, prompt="Once upon a time", max_tokens=900, stream=True, temperature=0,
            extra_body={"ignore_eos": True},
        )
        next(iter(held))
        expect(
            openai.RateLimitError,
            lambda: full.chat.completions.create(model=model, messages=hi, max_tokens=2),
            429,
            "rate_limit_exceeded",
        )
        expect(
            openai.RateLimitError,
            lambda: list(full.completions.create(model=model, prompt="x", max_tokens=2, stream=True)),
            429,
        )
        held.close()
    else:
        raise AssertionError("--full-base-url is required for the RateLimitError check")
    print("errors: ok")


if __name__ == "__main__":
    main()
