#!/usr/bin/env python3
"""llama.cpp's perplexity for a GGUF and a text, chunked exactly as `llama-perplexity` (and
`sovereign perplexity`) chunk it, through the llama-cpp-python package (benches/setup-llama-cpp).

    benches/perplexity-llama-cpp.py -m MODEL.gguf -f TEXT [-c 512] [--chunks N] [--gpu]

Prints the running estimate per chunk and `Final estimate: PPL = X +/- Y`, as both tools do, so
the last lines of the two can be compared directly.
"""

import argparse
import math
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--chunks", type=int)
    ap.add_argument("--gpu", action="store_true", help="offload every layer (Vulkan)")
    args = ap.parse_args()
    if args.chunks is not None and args.chunks < 1:
        ap.error("--chunks must be at least 1")
    if args.gpu:
        os.environ.setdefault("GGML_VK_VISIBLE_DEVICES", "0")
    try:
        import llama_cpp
        import numpy as np
    except ImportError as e:
        sys.exit(f"{e}: run benches/setup-llama-cpp first")

    n_ctx = args.ctx_size
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        n_gpu_layers=-1 if args.gpu else 0,
        verbose=False,
    )
    text = open(args.file, encoding="utf-8").read()
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    n_chunks = len(tokens) // n_ctx
    if args.chunks is not None:
        n_chunks = min(n_chunks, args.chunks)
    print(f"{len(tokens)} tokens; {n_chunks} of {len(tokens) // n_ctx} chunks of {n_ctx}; add_bos={add_bos}", file=sys.stderr)
    if len(tokens) < 2 * n_ctx:
        sys.exit(f"need at least {2 * n_ctx} tokens")
    first = n_ctx // 2
    total, total_sq, count = 0.0, 0.0, 0
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
        run = list(chunk)
        if add_bos:
            run[0] = llm.token_bos()
        llm.reset()
        llm.eval(run)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        for j in range(first, n_ctx - 1):
            row = logits[j]
            m = row.max()
            nll = math.log(np.exp(row - m).sum()) - (row[chunk[j + 1]] - m)
            total += nll
            total_sq += nll * nll
            count += 1
        print(f"[{c + 1}]{math.exp(total / count):.4f},", end="", flush=True)
    print()
    mean = total / count
    ppl = math.exp(mean)
    var = total_sq / count - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    print(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f} ({n_chunks} chunks, {count} tokens scored)")


if __name__ == "__main__":
    main()
