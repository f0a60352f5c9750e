"""Two requests that share a ~250-token prefix: the second reports the prefix as cached
(usage.prompt_tokens_details.cached_tokens) and its time to first token is a fraction of the
first's."""

import random
import time

from common import check, client, parse_args

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "silver", "golden"]
ANIMALS = ["fox", "owl", "otter", "badger", "heron", "lynx", "moth", "carp", "wren", "hare"]
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Perth", "Seoul", "Accra"]
THINGS = ["lanterns", "maps", "keys", "shells", "coins", "feathers", "stones", "bells"]


def prefix(n_notes, rng):
    # A fresh nonce first: nothing an earlier request left in the cache can match.
    lines = [f"Archive {rng.getrandbits(64):016x}. Notes of the travelling zoo:"]
    for i in range(n_notes):
        lines.append(
            f"Note {i + 1}: the {rng.choice(COLORS)} {rng.choice(ANIMALS)} of {rng.choice(CITIES)} "
            f"keeps {rng.randint(2, 99)} {rng.choice(THINGS)}."
        )
    return "\n".join(lines)


def first_token(c, args, prompt):
    """(seconds to the first streamed token, usage)."""
    t0 = time.monotonic()
    ttft, usage = None, None
    stream = c.completions.create(
        model=args.model,
        prompt=prompt,
        temperature=0,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and ttft is None:
            ttft = time.monotonic() - t0
        if chunk.usage is not None:
            usage = chunk.usage
    check(ttft is not None and usage is not None, "no token or no usage")
    return ttft, usage


def main():
    args = parse_args()
    c = client(args)
    shared = prefix(14, random.Random(time.time_ns()))

    t1, u1 = first_token(c, args, shared + "\nQuestion: which animal lives in Paris?\nAnswer:")
    cached1 = u1.prompt_tokens_details.cached_tokens
    print(f"  first:  {u1.prompt_tokens} prompt tokens, {cached1} cached, first token after {t1:.2f} s")
    check(200 <= u1.prompt_tokens <= 400, f"the shared prefix should be about 250 tokens: {u1.prompt_tokens}")
    check(cached1 < 16, f"the first request should start cold: {cached1} cached")

    t2, u2 = first_token(c, args, shared + "\nQuestion: how many keys are there?\nAnswer:")
    cached2 = u2.prompt_tokens_details.cached_tokens
    print(f"  second: {u2.prompt_tokens} prompt tokens, {cached2} cached, first token after {t2:.2f} s")
    check(cached2 > 0, "the second request reports no cached tokens")
    check(cached2 >= u1.prompt_tokens // 2, f"only {cached2} of the shared ~{u1.prompt_tokens} tokens were cached")
    check(cached2 < u2.prompt_tokens, "the question itself cannot be cached")
    check(t2 < 0.5 * t1, f"time to first token {t2:.2f} s is not a fraction of the cold {t1:.2f} s")
    print(f"  time to first token: {t2 / t1:.1%} of the cold request's")
    print("prefix_cache: ok")


if __name__ == "__main__":
    main()
