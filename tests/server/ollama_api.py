"""Ollama's API through the ollama client: chat and generate give the text the OpenAI
endpoints give for the same request (whole and streamed), format holds the reply to a schema,
tools are called, the model is listed, and errors carry Ollama's shape."""

import json
import sys
import urllib.request

try:
    import ollama
except ImportError:
    print("this test needs the ollama package: python3 -m pip install ollama", file=sys.stderr)
    sys.exit(2)

import openai

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
    check_eq(r.prompt_eval_count, want.usage.prompt_tokens, "prompt_eval_count")
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
        # Without num_predict (and with Ollama's -1 defaults) a raw prompt runs to its end, not
        # to the legacy endpoint's 16 tokens: the templated prompt raw gives the chat's reply.
        longer = [{"role": "user", "content": "Write two sentences about Paris."}]
        prompt = json.loads(urllib.request.urlopen(urllib.request.Request(
            root + "/apply-template", data=json.dumps({"messages": longer}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}"})).read())["prompt"]
        whole = c.chat.completions.create(model=model, messages=longer, temperature=0)
        check(whole.usage.completion_tokens > 16, f"a reply of {whole.usage.completion_tokens} tokens proves nothing")
        raw = o.generate(model=model, prompt=prompt, raw=True,
                         options={"temperature": 0, "seed": -1, "repeat_last_n": -1, "num_predict": -1})
        check_eq(raw.response, whole.choices[0].message.content, "raw generate to the end")
        check_eq(raw.done_reason, "stop", "raw generate's done_reason")
        # An empty conversation or prompt loads the model, as in Ollama.
        check_eq(o.chat(model=model, messages=[]).done_reason, "load", "empty chat")
        check_eq(o.generate(model=model, prompt="").done_reason, "load", "empty generate")

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
        # Results named by the call's id (as LangChain sends them) answer that call.
        two = q + [
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "a1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"id": "b2", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
            {"role": "tool", "content": "rainy", "tool_call_id": "b2"},
            {"role": "tool", "content": "sunny", "tool_call_id": "a1"},
        ]
        r = o.chat(model=model, messages=two, options={"temperature": 0, "num_predict": 8})
        check(r.done, "results by id")
        # A result of no call is taken, as Ollama takes it.
        r = o.chat(model=model, messages=q + [{"role": "tool", "content": "sunny", "tool_name": "get_weather"}],
                   options={"temperature": 0, "num_predict": 8})
        check(r.done, "a result of no call")
    print(f"  after the result: {r.message}")

    with Timer("a conversation longer than the context"):
        filler = " ".join(f"Fact {k}: the lighthouse keeper counted {k} ships that night." for k in range(8))
        long = [{"role": "system", "content": "You are brief."}]
        for i in range(12):
            long += [{"role": "user", "content": f"Question {i}. {filler}"},
                     {"role": "assistant", "content": f"Answer {i}: noted."}]
        long.append({"role": "user", "content": "What is the capital of France?"})
        try:
            c.chat.completions.create(model=model, messages=long, max_tokens=4)
            raise AssertionError("the OpenAI endpoint took a conversation longer than the context")
        except openai.BadRequestError as e:
            check("context" in str(e), f"openai too long: {e}")
        # Ollama's chat drops the oldest turns instead, keeping the system message and the
        # question, and leaving room for the reply.
        r = o.chat(model=model, messages=long, options={"temperature": 0, "num_predict": 4})
        check(r.done and r.message.content, f"long conversation: {r}")
        check(600 < r.prompt_eval_count <= 1024 - 4, f"prompt_eval_count {r.prompt_eval_count}")
    print(f"  long conversation: {r.prompt_eval_count} prompt tokens kept")

    for what, call, status in [
        ("another model", lambda: o.chat(model="nope", messages=ask), 404),
        ("an image", lambda: o.chat(model=model, messages=[{"role": "user", "content": "x", "images": ["aGk="]}]), 400),
        ("bad options", lambda: o.generate(model=model, prompt="x", options={"stop": 5}), 400),
        ("an endpoint it lacks", lambda: o.pull(model), 404),
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
