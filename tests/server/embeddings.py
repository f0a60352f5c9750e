"""Embeddings through the openai and ollama clients and llama.cpp's /embedding: one unit vector
per input whichever way it is asked for (base64 or floats, text or token ids, alone or in a
batch), similar texts closer than unrelated ones, and bad requests refused by field."""

import base64
import json
import math
import struct
import sys

try:
    import ollama
except ImportError:
    print("this test needs the ollama package: python3 -m pip install ollama", file=sys.stderr)
    sys.exit(2)

import openai

from common import Timer, call, check, check_eq, client, metrics, parse_args

CAT = "The cat sat on the mat."
KITTEN = "A kitten rested on the rug."
REVENUE = "Quarterly revenue rose by eight percent."


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


# Inputs batched into one step go through other kernel shapes than one alone: the sums differ
# in their last bits.
def close(a, b, what, tol=1e-4):
    check_eq(len(a), len(b), f"{what}: width")
    err = max(abs(x - y) for x, y in zip(a, b))
    check(err <= tol, f"{what}: max difference {err}")


def main():
    args = parse_args()
    root = args.base_url.rstrip("/").removesuffix("/v1")
    c = client(args)
    o = ollama.Client(host=root, headers={"Authorization": f"Bearer {args.api_key}"})
    model = args.model
    before = metrics(args)

    with Timer("openai: base64 (the client's default) and floats"):
        one = c.embeddings.create(model=model, input=CAT)
        floats = c.embeddings.create(model=model, input=CAT, encoding_format="float")
        # What the client decodes is what the server wrote: check the wire format itself.
        raw = c.embeddings.with_raw_response.create(model=model, input=CAT, encoding_format="base64")
    v = one.data[0].embedding
    check_eq(len(v), 576, "width")
    check(abs(norm(v) - 1) < 1e-5, f"norm {norm(v)}")
    check_eq(floats.data[0].embedding, v, "floats against base64")
    wire = json.loads(raw.http_response.text)["data"][0]["embedding"]
    check(isinstance(wire, str), f"base64 wire format: {str(wire)[:80]}")
    check_eq(list(struct.unpack("<576f", base64.b64decode(wire))), v, "base64 bytes")
    check_eq((one.object, one.data[0].object, one.data[0].index, one.model), ("list", "embedding", 0, model), "shape")
    n_cat = len(call(args, "POST", "/tokenize", {"content": CAT})[1]["tokens"])
    check_eq((one.usage.prompt_tokens, one.usage.total_tokens), (n_cat, n_cat), "usage")

    with Timer("a batch of three against each alone, token ids against text"):
        batch = c.embeddings.create(model=model, input=[CAT, KITTEN, REVENUE])
        alone = [c.embeddings.create(model=model, input=t).data[0].embedding for t in [CAT, KITTEN, REVENUE]]
        ids = call(args, "POST", "/tokenize", {"content": KITTEN})[1]["tokens"]
        by_ids = c.embeddings.create(model=model, input=[ids, ids])
    check_eq([d.index for d in batch.data], [0, 1, 2], "indices")
    for d, a in zip(batch.data, alone):
        close(d.embedding, a, f"batch input {d.index}")
    close(by_ids.data[0].embedding, alone[1], "token ids")
    check_eq(by_ids.usage.prompt_tokens, 2 * len(ids), "token id usage")
    near, far = cosine(alone[0], alone[1]), cosine(alone[0], alone[2])
    print(f"  cosine: cat~kitten {near:.3f}, cat~revenue {far:.3f}")
    check(near > far + 0.05, f"similar texts are not closer: {near} vs {far}")

    with Timer("llama.cpp /embedding"):
        status, body = call(args, "POST", "/embedding", {"content": CAT})
        check_eq(status, 200, f"/embedding: {body}")
        check_eq([e["index"] for e in body], [0], "/embedding indices")
        close(body[0]["embedding"][0], v, "/embedding vector")
        status, body = call(args, "POST", "/embedding", {"content": [CAT, REVENUE], "embd_normalize": -1})
        check_eq(status, 200, f"/embedding unnormalized: {body}")
        raw_cat = body[0]["embedding"][0]
        check(norm(raw_cat) > 2, f"unnormalized norm {norm(raw_cat)}")
        close([x / norm(raw_cat) for x in raw_cat], v, "unnormalized, then scaled")
        close(body[1]["embedding"][0], [x * norm(body[1]["embedding"][0]) for x in alone[2]], "second input", 1e-4)
        # llama.cpp takes `input` there too, and names the field a bad input was under.
        status, body = call(args, "POST", "/embedding", {"input": CAT})
        check_eq(status, 200, f"/embedding with input: {body}")
        close(body[0]["embedding"][0], v, "/embedding with input")
        status, body = call(args, "POST", "/embedding", {"content": [CAT, ""]})
        check_eq((status, body["error"]["param"]), (400, "content[1]"), f"/embedding empty input: {body}")

    with Timer("ollama embed and embeddings"):
        e = o.embed(model=model, input=[CAT, REVENUE])
        check_eq(len(e.embeddings), 2, "ollama embed count")
        close(list(e.embeddings[0]), v, "ollama embed")
        close(list(e.embeddings[1]), alone[2], "ollama embed second")
        check_eq(e.prompt_eval_count, n_cat + len(call(args, "POST", "/tokenize", {"content": REVENUE})[1]["tokens"]), "prompt_eval_count")
        single = o.embed(model=model, input=CAT)
        close(list(single.embeddings[0]), v, "ollama embed of a string")
        legacy = o.embeddings(model=model, prompt=CAT)
        close([x / norm(legacy.embedding) for x in legacy.embedding], v, "ollama embeddings (not normalized)")
        check(norm(legacy.embedding) > 2, "legacy embeddings are not normalized")
        check_eq(list(o.embed(model=model, input=[]).embeddings), [], "empty input loads")
        check(o.show(model).capabilities and "embedding" in o.show(model).capabilities, "capabilities")

    with Timer("bad requests"):
        for kwargs, param in [
            ({"input": CAT, "dimensions": 64}, "dimensions"),
            ({"input": ""}, "input"),
            ({"input": [CAT, ""]}, "input[1]"),
            ({"input": [[1, 2], [49152]]}, "input"),
            ({"input": CAT, "encoding_format": "int8"}, "encoding_format"),
            ({"input": [CAT, 3]}, "input[1]"),
            ({"input": CAT, "extra_body": {"embd_normalize": -2}}, "embd_normalize"),
        ]:
            try:
                c.embeddings.create(model=model, **kwargs)
                raise AssertionError(f"accepted: {kwargs}")
            except openai.BadRequestError as err:
                check_eq(err.body.get("param") if isinstance(err.body, dict) else None, param, f"param of {kwargs}")
        try:
            c.embeddings.create(model="no-such-model", input=CAT)
            raise AssertionError("accepted an unknown model")
        except openai.NotFoundError:
            pass
        long = " ".join(["word"] * 3000)
        try:
            c.embeddings.create(model=model, input=long)
            raise AssertionError("accepted an input longer than the context")
        except openai.BadRequestError as err:
            check("context" in str(err), f"too long: {err}")
        # Ollama cuts it to the context unless told not to (the cut itself is tests/embed.rs's:
        # a context of prefill takes half a minute on a CPU adapter).
        try:
            o.embed(model=model, input=long, truncate=False)
            raise AssertionError("ollama accepted a long input with truncate false")
        except ollama.ResponseError as err:
            check_eq(err.status_code, 400, f"ollama too long: {err}")

    after = metrics(args)
    requests = after["sovereign_embedding_requests_total"] - before["sovereign_embedding_requests_total"]
    inputs = after["sovereign_embedded_inputs_total"] - before["sovereign_embedded_inputs_total"]
    # Refused requests are not counted: 14 ran, with 19 inputs among them.
    check_eq((requests, inputs), (14, 19), "embedding metrics")
    check_eq(after["sovereign_running_sequences"], 0.0, "nothing left running")
    print("embeddings: all checks passed")


if __name__ == "__main__":
    main()
