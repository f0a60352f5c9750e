#!/usr/bin/env python3
"""Sovereign against llama.cpp on the same model and the same Vulkan driver, in one run.

Prints pp and tg tokens/s for both and their ratio (Sovereign / llama.cpp), as a Markdown table
for benches/RESULTS.md. llama.cpp runs through the `llama-cpp-python` package built with its
Vulkan backend (benches/setup-llama-cpp builds it); each test runs as llama-bench runs it: one
unmeasured warm-up, then --repetitions measured runs of random tokens from an empty cache.

    benches/compare-llama-cpp.py -m MODEL.gguf [-p 512] [-n 128] [-r 3] [--sovereign PATH]
        [--variant LABEL:VAR=VALUE,...]... [--no-llama-cpp]

Each --variant runs Sovereign once more with those environment variables (for example
`--variant coop:SOVEREIGN_COOP_MATRIX=1`), in the same run as the others, so that a kernel switch
is measured against the default and against llama.cpp on one machine at one time; a variant
that fails is reported and left out of the table, and the script then exits with status 3. Without llama.cpp (--no-llama-cpp) the ratios
are against Sovereign's first row.

llama.cpp ignores CPU Vulkan devices such as lavapipe unless GGML_VK_VISIBLE_DEVICES names them;
this script sets it to 0 when it is unset.
"""

import argparse
import datetime
import json
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import time


def llama_cpp_bench(model, n_prompt, n_gen, reps):
    os.environ.setdefault("GGML_VK_VISIBLE_DEVICES", "0")
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama_cpp is not importable: run benches/setup-llama-cpp first")
    n_ctx = max(n_prompt, n_gen) + 16
    llm = llama_cpp.Llama(
        model_path=model,
        n_gpu_layers=-1,
        n_ctx=n_ctx,
        n_batch=max(n_prompt, 1),
        n_ubatch=max(n_prompt, 1),
        logits_all=False,
        verbose=False,
    )
    n_vocab = llm.n_vocab()
    rng = random.Random(1234)

    def pp():
        tokens = [rng.randrange(n_vocab) for _ in range(n_prompt)]
        # eval() drops the cache past n_tokens, so a reset starts from an empty cache.
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        return n_prompt / (time.perf_counter() - start)

    def tg():
        llm.reset()
        start = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([rng.randrange(n_vocab)])
        return n_gen / (time.perf_counter() - start)

    results = {}
    for name, n, test in (("pp", n_prompt, pp), ("tg", n_gen, tg)):
        if n == 0:
            continue
        test()
        samples = [test() for _ in range(reps)]
        results[f"{name}{n}"] = samples
    return results, llama_cpp.__version__


def sovereign_bench(binary, model, n_prompt, n_gen, reps, adapter, json_out, env=None):
    cmd = [binary, "bench", "-m", model, "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-o", "json"]
    if adapter:
        cmd += ["--adapter", adapter]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if run.returncode != 0:
        message = f"{shlex.join(cmd)} failed (status {run.returncode}):\n{run.stderr}"
        if env:
            # A variant that fails is reported and left out; the others still compare.
            print(f"{' '.join(f'{k}={v}' for k, v in env.items())} {message}", file=sys.stderr)
            return None, None
        sys.exit(message)
    out = run.stdout
    tests = json.loads(out)
    if json_out:
        with open(json_out, "w") as f:
            f.write(out)
    gpu = tests[0]["gpu_info"] if tests else "?"
    return {t["test"]: t["samples_ts"] for t in tests}, gpu


def parse_variant(text):
    """`LABEL:VAR=VALUE,VAR=VALUE` to (label, {VAR: VALUE})."""
    label, sep, assignments = text.partition(":")
    env = {}
    # A comma starts the next variable only before NAME=, so values may hold commas
    # (SOVEREIGN_MATMUL_TILES=32,64,32).
    for item in filter(None, re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", assignments)):
        var, eq, value = item.partition("=")
        if not eq or not var:
            raise argparse.ArgumentTypeError(f"{item!r} in --variant {text!r} is not VAR=VALUE")
        env[var] = value
    if not sep or not label or not env:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: want LABEL:VAR=VALUE[,VAR=VALUE...]")
    return label, env


def fmt(samples):
    mean = statistics.fmean(samples)
    sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return mean, f"{mean:.2f} ± {sd:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--sovereign", default="target/release/sovereign", help="the sovereign binary")
    ap.add_argument("--adapter", help="passed to sovereign --adapter")
    ap.add_argument("--json-out", help="also keep Sovereign's JSON report (host and step times) of the default run here")
    ap.add_argument("--variant", action="append", type=parse_variant, default=[],
                    help="LABEL:VAR=VALUE,...: Sovereign once more with these environment variables")
    ap.add_argument("--no-llama-cpp", action="store_true",
                    help="only Sovereign's rows, compared with its first")
    args = ap.parse_args()
    if not os.path.exists(args.sovereign):
        sys.exit(f"{args.sovereign} not found: cargo build --release first")

    labels = [label for label, _ in args.variant]
    if "default" in labels or len(set(labels)) != len(labels):
        ap.error("--variant labels must differ from each other and from 'default'")
    if args.no_llama_cpp and not args.variant:
        ap.error("--no-llama-cpp compares variants with the default: give at least one --variant")
    if args.adapter and "GGML_VK_VISIBLE_DEVICES" not in os.environ and not args.no_llama_cpp:
        print("note: --adapter moves Sovereign only; llama.cpp runs on GGML_VK_VISIBLE_DEVICES (0 unless set)",
              file=sys.stderr)

    runs = [("default", {})] + args.variant
    ours, adapters, failed = {}, {}, []
    for i, (label, env) in enumerate(runs):
        json_out = args.json_out if i == 0 else None
        results, adapters[label] = sovereign_bench(args.sovereign, args.model, args.n_prompt, args.n_gen,
                                                   args.repetitions, args.adapter, json_out, env)
        if results is None:
            failed.append(label)
            continue
        ours[label] = results
        # Shown at once: the llama.cpp half of a run on a slow adapter takes minutes.
        for test, samples in results.items():
            print(f"sovereign ({label}) {test}: {fmt(samples)[1]} t/s", file=sys.stderr, flush=True)
    if args.no_llama_cpp:
        theirs, peer = ours["default"], "Sovereign default"
        version = None
    else:
        theirs, version = llama_cpp_bench(args.model, args.n_prompt, args.n_gen, args.repetitions)
        peer = "llama.cpp Vulkan"

    peer_text = f"llama-cpp-python {version} (Vulkan)" if version else "no llama.cpp"
    print(f"- Date: {datetime.date.today()}; adapter: {adapters['default']}; {peer_text}")
    for label in failed:
        print(f"- Variant {label} failed (its error is on stderr) and has no rows")
    for label, _ in args.variant:
        if label not in failed and adapters[label] != adapters["default"]:
            print(f"- Variant {label} ran on another adapter: {adapters[label]}")
    print(f"- Model: {os.path.basename(args.model)}; {args.repetitions} repetitions after a warm-up")
    command = ["benches/compare-llama-cpp.py", "-m", os.path.basename(args.model), "-p", str(args.n_prompt),
               "-n", str(args.n_gen), "-r", str(args.repetitions)]
    if args.adapter:
        command += ["--adapter", args.adapter]
    for label, env in args.variant:
        command += ["--variant", f"{label}:" + ",".join(f"{k}={v}" for k, v in env.items())]
    if args.no_llama_cpp:
        command += ["--no-llama-cpp"]
    print(f"- Command: `{shlex.join(command)}`")
    print()
    if len(runs) == 1:
        print(f"| test | Sovereign t/s | {peer} t/s | ratio |")
        print("| --- | ---: | ---: | ---: |")
    else:
        print(f"| test | Sovereign | t/s | {peer} t/s | ratio |")
        print("| --- | --- | ---: | ---: | ---: |")
    for test in ours["default"]:
        if test not in theirs:
            continue
        b, b_text = fmt(theirs[test])
        for label, _ in runs:
            if test not in ours.get(label, {}):
                continue
            a, a_text = fmt(ours[label][test])
            if len(runs) == 1:
                print(f"| {test} | {a_text} | {b_text} | {a / b:.2f}x |")
            else:
                print(f"| {test} | {label} | {a_text} | {b_text} | {a / b:.2f}x |")
    if failed:
        sys.exit(3)


if __name__ == "__main__":
    main()
