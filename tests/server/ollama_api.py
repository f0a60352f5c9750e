"""Ollama's API through the ollama client: chat and generate give the text the OpenAI
endpoints give for the same request (whole and streamed), format holds the reply to a schema,
tools are called, the model is listed, and errors carry Ollama's shape."""

import json
import sys

try:
    import ollama
except ImportError:
    print("this test needs the ollama package: python3 -m pip install ollama", file=sys.stderr)
    sys.exit(2)

from common import Timer, check, check_eq, client, parse_args


def get_weather(city: str) -> str:
    """The current weather in a city.

    Args:
      city: The city's name
    """
    return "sunny"


def main():
    args = parse_args()
    root = args.base_url.rstrip("/").removesuffix("/v1")
    o = ollama.Client(host=root, headers={"Authorization": f"Bearer {args.api_key}"})
    c = client(args)
    model = args.model
    ask = [{"role": "user", "content": "What is the capital of France?"}]

    tags = o.list()
    check_eq([m.model for m in tags.models], [model], "tags")
    check(o.show(model).template, "show: no template")
    check_eq([m.model for m in o.ps().models], [model], "ps")

    with Timer("chat, whole and streamed, against /v1/chat/completions"):
        want = c.chat.completions.create(model=model, messages=ask, temperature=0, max_tokens=24)
        r = o.chat(model=model, messages=ask, options={"temperature": 0, "num_predict": 24})
        streamed = list(o.chat(model=model, messages=ask, options={"temperature": 0, "num_predict": 24}, stream=True))
    check_eq(r.message.content, want.choices[0].message.content, "chat text")
    check_eq(r.done_reason, "stop" if want.choices[0].finish_reason == "stop" else "length", "done_reason")
    check_eq(r.eval_count, want.usage.completion_tokens, "eval_count")
    check(r.total_duration > 0 and r.eval_duration > 0, f"durations: {r}")
    check_eq("".join(x.message.content for x in streamed), r.message.content, "streamed chat text")
    check(len(streamed) > 2 and streamed[-1].done and not streamed[0].done, "stream lines")
    print(f"  chat: {r.message.content!r}")

    with Timer("generate, raw and templated"):
        raw = o.generate(model=model, prompt="The capital of France is", raw=True, options={"temperature": 0, "num_predict": 8})
        want = c.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=8)
        check_eq(raw.response, want.choices[0].text, "raw generate text")
        templated = o.generate(model=model, prompt=ask[0]["content"], options={"temperature": 0, "num_predict": 24})
        check_eq(templated.response, r.message.content, "templated generate text")

    with Timer("format (a JSON schema)"):
        schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}
        r = o.chat(model=model, messages=ask, format=schema, options={"temperature": 0})
    v = json.loads(r.message.content)
    check(isinstance(v["city"], str), f"format: {r.message.content!r}")

    with Timer("tools"):
        q = [{"role": "user", "content": "What is the weather in Paris?"}]
        # Ollama has no tool_choice: a small model may answer in words, so the call is asked of
        # the OpenAI endpoint and its history given to Ollama's.
        called = c.chat.completions.create(
            model=model, messages=q, temperature=0, max_tokens=60, tool_choice="required",
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}}}],
        )
        call = called.choices[0].message.tool_calls[0]
        history = q + [
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)}}]},
            {"role": "tool", "content": "21 degrees and sunny", "tool_name": "get_weather"},
        ]
        r = o.chat(model=model, messages=history, tools=[get_weather], options={"temperature": 0, "num_predict": 60})
        check(r.message.content or r.message.tool_calls, f"after a result: {r.message}")
        for m in [r.message]:
            for t in m.tool_calls or []:
                check_eq(t.function.name, "get_weather", "called tool")
                check(isinstance(t.function.arguments, dict), f"arguments: {t}")
        # A result of no call is taken, as Ollama takes it.
        r = o.chat(model=model, messages=q + [{"role": "tool", "content": "sunny", "tool_name": "get_weather"}],
                   options={"temperature": 0, "num_predict": 8})
        check(r.done, "a result of no call")
    print(f"  after the result: {r.message}")

    for what, call, status in [
        ("another model", lambda: o.chat(model="nope", messages=ask), 404),
        ("an image", lambda: o.chat(model=model, messages=[{"role": "user", "content": "x", "images": ["aGk="]}]), 400),
        ("bad options", lambda: o.generate(model=model, prompt="x", options={"temperature": 9}), 400),
    ]:
        try:
            call()
            raise AssertionError(f"{what} was accepted")
        except ollama.ResponseError as e:
            check_eq(e.status_code, status, f"status of {what}")
            check(isinstance(e.error, str) and e.error, f"error of {what}: {e.error!r}")
    print("  errors: Ollama's shape")


if __name__ == "__main__":
    main()
