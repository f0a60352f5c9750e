"""llama.cpp's own /completion API, as scripts written for llama-server call it: the same text
as the OpenAI endpoint for the same greedy request, whole and streamed as server-sent events,
token probabilities, stop words, grammars, llama.cpp's summary fields, /props, and refusals by
field."""

from common import Timer, call, check, check_eq, client, parse_args


def main():
    args = parse_args()
    c = client(args)
    post = lambda path, body=None, method="POST", stream=False: call(args, method, path, body, stream)
    prompt = "The capital of France is"

    with Timer("greedy, whole and streamed, against /v1/completions"):
        want = c.completions.create(model=args.model, prompt=prompt, temperature=0, max_tokens=12)
        status, r = post("/completion", {"prompt": prompt, "temperature": 0, "n_predict": 12})
        check_eq(status, 200, f"/completion: {r}")
        check_eq(r["content"], want.choices[0].text, "content")
        check_eq((r["stop"], r["tokens_predicted"], r["tokens_evaluated"]), (True, 12, want.usage.prompt_tokens), "counts")
        check_eq((r["stop_type"], r["stopped_limit"], r["stopped_eos"]), ("limit", True, False), "stop type")
        check_eq(len(r["tokens"]), 12, "tokens")
        detok = post("/detokenize", {"tokens": r["tokens"]})[1]["content"]
        check_eq(detok, r["content"], "tokens against content")
        t = r["timings"]
        check(t["predicted_n"] == 12 and t["predicted_ms"] > 0 and t["predicted_per_second"] > 0, f"timings: {t}")
        check_eq((r["prompt"], r["model"]), (prompt, args.model), "prompt and model")
        status, events = post("/completion", {"prompt": prompt, "temperature": 0, "n_predict": 12, "stream": True}, stream=True)
        check_eq(status, 200, "streamed status")
        check(len(events) >= 3 and all(not e["stop"] for e in events[:-1]) and events[-1]["stop"], f"stream: {events[:3]}")
        check_eq("".join(e["content"] for e in events), r["content"], "streamed content")
        check_eq([t for e in events[:-1] for t in e["tokens"]], r["tokens"], "streamed tokens")
    print(f"  /completion: {r['content']!r}")

    with Timer("token ids, probabilities, stop words, grammar, the /completions alias"):
        ids = post("/tokenize", {"content": prompt})[1]["tokens"]
        status, by_ids = post("/completions", {"prompt": ids, "temperature": 0, "n_predict": 12})
        check_eq((status, by_ids["content"]), (200, r["content"]), "token id prompt through /completions")
        status, p = post("/completion", {"prompt": prompt, "temperature": 0, "n_predict": 3, "n_probs": 3})
        probs = p["completion_probabilities"]
        check_eq(len(probs), 3, "one entry per token")
        for e, tok in zip(probs, p["tokens"]):
            check_eq(e["id"], tok, "probability entry's token")
            check_eq(len(e["top_logprobs"]), 3, "alternatives")
            check_eq(e["top_logprobs"][0]["id"], tok, "greedy takes the most likely")
            check(e["logprob"] <= 0, f"logprob {e}")
        status, w = post("/completion", {"prompt": "Count: one, two, three,", "temperature": 0, "n_predict": 24, "stop": [","]})
        check_eq((w["stop_type"], w["stopping_word"], w["stopped_word"]), ("word", ",", True), f"stop word: {w['content']!r}")
        check("," not in w["content"], "the stop word is not in the content")
        status, g = post("/completion", {"prompt": "Is water wet? Answer:", "temperature": 0, "n_predict": 8,
                                         "grammar": 'root ::= " " ("yes" | "no") "."'})
        check(g["content"] in (" yes.", " no."), f"grammar: {g['content']!r}")

    with Timer("/props and refusals"):
        status, props = post("/props", method="GET")
        check_eq(status, 200, "/props")
        check_eq(props["default_generation_settings"]["n_ctx"], 1024, "n_ctx")
        check(props["total_slots"] >= 1 and props["chat_template"], f"props: {props}")
        for body, param in [
            ({"prompt": prompt, "mirostat": 2}, "mirostat"),
            ({"prompt": prompt, "n_predict": -5}, "n_predict"),
            ({"prompt": prompt, "temperature": "hot"}, "temperature"),
            ({"n_predict": 4}, "prompt"),
            ({"prompt": prompt, "grammar": "root ::= missing"}, "grammar"),
        ]:
            status, e = post("/completion", body)
            check_eq((status, e["error"]["param"]), (400, param), f"refusal of {body}: {e}")
        # n_predict 0 runs the prompt only, as llama.cpp does.
        status, none = post("/completion", {"prompt": prompt, "n_predict": 0})
        check_eq((status, none["content"], none["tokens_predicted"], none["stop"]), (200, "", 0, True), f"n_predict 0: {none}")
        # llama.cpp's page sends every sampler, the absent ones at their off values: served.
        status, ok = post("/completion", {"prompt": prompt, "n_predict": 1, "mirostat": 0, "typical_p": 1.0,
                                          "dry_multiplier": 0, "mirostat_tau": 5, "cache_prompt": True})
        check_eq((status, ok["tokens_predicted"]), (200, 1), f"off samplers: {ok}")
    print("llama.cpp API: all checks passed")


if __name__ == "__main__":
    main()
