"""Chat and text completions through the openai client: streaming and not, usage, stop strings,
finish reasons, logprobs, and the same text streamed as not for the same seed."""

from common import Timer, check, check_eq, client, dump, parse_args


def stream_chat(c, **kwargs):
    """Text, finish reason, usage and chunks of a streamed chat completion."""
    text, finish, usage, chunks = "", None, None, []
    for chunk in c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        chunks.append(chunk)
        check_eq(chunk.object, "chat.completion.chunk", "chunk object")
        if chunk.usage is not None:
            check_eq(chunk.choices, [], "choices of the usage chunk")
            usage = chunk.usage
            continue
        check_eq(len(chunk.choices), 1, "choices per chunk")
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        if choice.finish_reason is not None:
            finish = choice.finish_reason
    check(chunks and chunks[0].choices[0].delta.role == "assistant", f"first chunk: {dump(chunks[0])}")
    check(usage is not None and chunks[-1].usage is usage, "the usage chunk comes last")
    check(len({ch.id for ch in chunks}) == 1, "one id per stream")
    return text, finish, usage, chunks


def stream_text(c, **kwargs):
    text, finish, usage, chunks = "", None, None, []
    for chunk in c.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        chunks.append(chunk)
        if chunk.usage is not None:
            usage = chunk.usage
            continue
        choice = chunk.choices[0]
        text += choice.text
        if choice.finish_reason is not None:
            finish = choice.finish_reason
    check(usage is not None, "no usage chunk")
    return text, finish, usage, chunks


def check_usage(u, max_tokens, what):
    check(u.prompt_tokens > 0, f"{what}: prompt_tokens {u.prompt_tokens}")
    check(0 < u.completion_tokens <= max_tokens, f"{what}: completion_tokens {u.completion_tokens}")
    check_eq(u.total_tokens, u.prompt_tokens + u.completion_tokens, f"{what}: total_tokens")
    cached = u.prompt_tokens_details.cached_tokens
    check(0 <= cached < u.prompt_tokens, f"{what}: cached_tokens {cached}")


def main():
    args = parse_args()
    c = client(args)
    model = args.model

    check(model in [m.id for m in c.models.list().data], "the served model is listed")
    check_eq(c.models.retrieve(model).id, model, "retrieved model")

    messages = [{"role": "user", "content": "Name a color."}]
    with Timer("chat, greedy"):
        r = c.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=6)
    check_eq(r.object, "chat.completion", "object")
    check_eq(r.model, model, "model")
    choice = r.choices[0]
    check_eq(choice.message.role, "assistant", "role")
    check(choice.message.content, f"empty reply: {dump(r)}")
    check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason}")
    check_usage(r.usage, 6, "chat")
    if choice.finish_reason == "length":
        check_eq(r.usage.completion_tokens, 6, "completion_tokens at the limit")
    print(f"  chat: {choice.message.content!r} ({choice.finish_reason})")

    with Timer("chat, greedy, streamed"):
        text, finish, usage, _ = stream_chat(c, model=model, messages=messages, temperature=0, max_tokens=6)
    check_eq(text, choice.message.content, "streamed text")
    check_eq(finish, choice.finish_reason, "streamed finish_reason")
    check_eq(usage.completion_tokens, r.usage.completion_tokens, "streamed completion_tokens")
    check_eq(usage.prompt_tokens, r.usage.prompt_tokens, "streamed prompt_tokens")

    # Sampling at temperature > 0 with a seed: the same text streamed or not.
    sampled = dict(
        model=model,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say a word."}],
        temperature=0.9,
        seed=1234,
        max_tokens=8,
        presence_penalty=0.3,
        frequency_penalty=0.2,
        extra_body={"top_k": 50, "min_p": 0.02, "repeat_penalty": 1.05},
    )
    with Timer("chat, seeded, both ways"):
        r1 = c.chat.completions.create(**sampled)
        text, finish, _, _ = stream_chat(c, **sampled)
    check_eq(text, r1.choices[0].message.content, "seeded chat streamed vs not")
    check_eq(finish, r1.choices[0].finish_reason, "seeded chat finish_reason")
    print(f"  seeded chat: {text!r}")

    seeded_text = dict(model=model, prompt="Once upon a time", temperature=0.9, top_p=0.95, seed=7, max_tokens=8)
    with Timer("completion, seeded, both ways"):
        r2 = c.completions.create(**seeded_text)
        text, finish, usage, _ = stream_text(c, **seeded_text)
    check_eq(r2.object, "text_completion", "object")
    check_eq(text, r2.choices[0].text, "seeded completion streamed vs not")
    check_eq(finish, r2.choices[0].finish_reason, "seeded completion finish_reason")
    check_usage(r2.usage, 8, "completion")
    check_eq(usage.completion_tokens, r2.usage.completion_tokens, "streamed completion_tokens")
    print(f"  seeded completion: {text!r}")

    # Stop strings end generation before them (finish_reason stop); the limit ends it with length.
    with Timer("completion, stop string and limit"):
        r = c.completions.create(model=model, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 7", "\n\n"])
        limited = c.completions.create(model=model, prompt="1, 2, 3, 4,", temperature=0, max_tokens=3)
    check("7" not in r.choices[0].text and r.choices[0].finish_reason == "stop", f"stop string: {dump(r)}")
    check_eq(limited.choices[0].finish_reason, "length", "finish at max_tokens")
    check_eq(limited.usage.completion_tokens, 3, "completion_tokens at max_tokens")
    print(f"  stopped: {r.choices[0].text!r}")

    # Log-probabilities: chat's per-token entries, the legacy endpoint's parallel arrays.
    with Timer("logprobs"):
        r = c.chat.completions.create(
            model=model, messages=messages, temperature=0, max_completion_tokens=3, logprobs=True, top_logprobs=2
        )
        t = c.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=3, logprobs=2)
    content = r.choices[0].logprobs.content
    check_eq(len(content), r.usage.completion_tokens, "chat logprob entries")
    check(r.usage.completion_tokens <= 3, "max_completion_tokens")
    for e in content:
        check(e.logprob <= 0 and len(e.top_logprobs) == 2, f"entry {e}")
        check_eq(e.token, e.top_logprobs[0].token, "greedy picks the most likely token")
        check_eq(bytes(e.bytes).decode("utf-8", "replace"), e.token, "bytes")
    lp = t.choices[0].logprobs
    check_eq(len(lp.tokens), t.usage.completion_tokens, "completion logprob tokens")
    check_eq("".join(lp.tokens), t.choices[0].text, "tokens spell the text")
    check_eq(len(lp.token_logprobs), len(lp.tokens), "token_logprobs")
    check(all(len(top) <= 2 for top in lp.top_logprobs), "top_logprobs size")
    check_eq(lp.text_offset[0], 0, "first text_offset")
    check(lp.text_offset == sorted(lp.text_offset), "text_offset increases")

    # A conversation with every role and content parts.
    with Timer("chat, multi-turn"):
        r = c.chat.completions.create(
            model=model,
            messages=[
                {"role": "developer", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"},
            ],
            temperature=0,
            max_tokens=2,
            n=1,
        )
    check(r.usage.completion_tokens <= 2, "multi-turn limit")
    print("basic: ok")


if __name__ == "__main__":
    main()
