"""Closing a stream's connection cancels its request: within one second /metrics shows no
running sequence and the KV pages back at their idle count."""

import time

from common import check, client, metrics, parse_args

PROMPT = "Write a long story about a dragon who learns to paint."


def main():
    args = parse_args()
    c = client(args)
    request = dict(model=args.model, prompt=PROMPT, temperature=0)

    # Run the prompt once first: whatever the engine keeps cached for it afterwards (its prefix,
    # the first tokens) is part of the idle state, since greedy decoding repeats those tokens.
    c.completions.create(max_tokens=8, **request)
    idle = metrics(args)
    check(idle["sovereign_running_sequences"] == 0, f"busy before the test: {idle}")
    idle_pages = idle["sovereign_kv_pages_used"]
    cancelled_before = idle['sovereign_requests_total{outcome="cancelled"}']

    stream = c.completions.create(max_tokens=500, stream=True, **request)
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            received += 1
        if received == 2:
            break
    during = metrics(args)
    check(during["sovereign_running_sequences"] >= 1, f"the stream is not running: {during}")
    stream.close()
    closed = time.monotonic()

    while True:
        m = metrics(args)
        waited = time.monotonic() - closed
        done = m["sovereign_running_sequences"] == 0 and m["sovereign_kv_pages_used"] <= idle_pages
        if done:
            break
        check(
            waited < 1.0,
            f"1 s after closing: running_sequences {m['sovereign_running_sequences']}, "
            f"kv_pages_used {m['sovereign_kv_pages_used']} (idle {idle_pages})",
        )
        time.sleep(0.02)
    check(
        m['sovereign_requests_total{outcome="cancelled"}'] == cancelled_before + 1,
        "the request was not counted as cancelled",
    )
    print(f"  freed {waited * 1000:.0f} ms after the connection closed (kv pages used {m['sovereign_kv_pages_used']:.0f}, idle {idle_pages:.0f}, during {during['sovereign_kv_pages_used']:.0f})")
    print("cancel: ok")


if __name__ == "__main__":
    main()
