"""32 concurrent greedy streams each produce exactly the text their prompt produces alone."""

import threading
import time

from common import Timer, check, check_eq, client, parse_args

PROMPTS = [
    "The capital of France is",
    "1, 2, 3,",
    "Water boils at",
    "My favourite fruit is the",
    "Roses are red, violets are",
    "In the beginning",
    "def add(a, b):",
    "The quick brown fox jumps over the",
]
STREAMS = 32
MAX_TOKENS = 6


def main():
    args = parse_args()
    c = client(args)
    request = dict(model=args.model, temperature=0, max_tokens=MAX_TOKENS)

    solo = {}
    with Timer(f"{len(PROMPTS)} prompts alone"):
        for p in PROMPTS:
            r = c.completions.create(prompt=p, **request)
            solo[p] = r.choices[0].text
            check(r.usage.completion_tokens > 0, f"{p!r}: nothing generated")

    results = [None] * STREAMS
    errors = []
    start = threading.Barrier(STREAMS)

    def run(i):
        prompt = PROMPTS[i % len(PROMPTS)]
        try:
            start.wait()
            text, finish = "", None
            for chunk in c.completions.create(prompt=prompt, stream=True, **request):
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
            results[i] = (prompt, text, finish)
        except Exception as e:  # reported below: a thread's exception would vanish
            errors.append(f"stream {i} ({prompt!r}): {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(STREAMS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    check(not errors, "\n".join(errors))
    for i, (prompt, text, finish) in enumerate(results):
        check_eq(text, solo[prompt], f"stream {i} ({prompt!r})")
        check(finish in ("stop", "length"), f"stream {i}: finish_reason {finish}")
    tokens = sum(len(text) for _, text, _ in results)
    print(f"  {STREAMS} concurrent streams: {elapsed:.1f} s ({tokens} characters)")
    print("concurrency: ok")


if __name__ == "__main__":
    main()
