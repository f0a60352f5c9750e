"""Shared by the server tests: arguments, the client, /metrics, checks.

Each script runs against a server that tests/server.rs started:
    python3 tests/server/<script>.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY --model NAME
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

try:
    import openai
except ImportError:
    print("the server tests need the openai package: python3 -m pip install openai", file=sys.stderr)
    sys.exit(2)


def parse_args(extra=None):
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--full-base-url", help="a server whose queue takes nothing")
    if extra:
        extra(p)
    return p.parse_args()


def client(args, **kwargs):
    # No retries: a retried request would hide the status the test is about.
    kwargs.setdefault("api_key", args.api_key)
    kwargs.setdefault("base_url", args.base_url)
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 600)
    return openai.OpenAI(**kwargs)


def metrics(args):
    """/metrics as {series: value}, e.g. {'sovereign_running_sequences': 0.0}."""
    root = args.base_url.rstrip("/").removesuffix("/v1")
    req = urllib.request.Request(root + "/metrics", headers={"Authorization": f"Bearer {args.api_key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def call(args, method, path, body=None, stream=False):
    """A request to the server's root (outside /v1): (status, JSON body), or with `stream` the
    JSON of each server-sent event. Error statuses come back, not raised."""
    root = args.base_url.rstrip("/").removesuffix("/v1")
    req = urllib.request.Request(
        root + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            text = r.read().decode()
            if not stream:
                return r.status, json.loads(text)
            return r.status, [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def check_eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


class Timer:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t = time.monotonic()
        return self

    def __exit__(self, *exc):
        print(f"  {self.name}: {time.monotonic() - self.t:.1f} s", flush=True)


def dump(obj):
    return json.dumps(obj.model_dump() if hasattr(obj, "model_dump") else obj)[:2000]
