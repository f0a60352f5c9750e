"""Drives the demo page served by `sovereign web` in headless Chromium (WebGPU, on SwiftShader
unless SOVEREIGN_CHROME_FLAGS say otherwise) and prints what it saw as one JSON object on stdout;
tests/browser.rs asserts on it.

    python3 tests/browser/demo.py --url http://127.0.0.1:PORT/ --prompt TEXT --tokens 8 \
        [--screenshot FILE] [--bench STREAMS,N_PROMPT,N_GEN] [--skip-kernels]
    python3 tests/browser/demo.py --url http://127.0.0.1:PORT/ --bench STREAMS,N_PROMPT,N_GEN --bench-only

Needs Debian's chromium and chromium-driver and the selenium package.
"""

import argparse
import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    # The machine's network is closed: no background connections to make and fail.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,760",
]
# More flags for one run, split on spaces (benches/browser.py --lavapipe sets them).
CHROME_FLAGS += os.environ.get("SOVEREIGN_CHROME_FLAGS", "").split()


# Texts the browser embeds; tests/browser.rs embeds the same ones natively.
EMBED_TEXTS = ["The cat sat on the mat.", "Quarterly revenue rose by eight percent."]


def browser(webgpu=True):
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROME_FLAGS:
        if webgpu or flag != "--enable-unsafe-webgpu":
            options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    return driver


def run_async(driver, body, timeout=900):
    """Runs `body` (an async function body) in the page and returns what it returns. The result
    is polled for: one WebDriver call may not stay open as long as a step on a software GPU."""
    driver.execute_script(
        "window.__result = undefined;"
        f"(async () => {{ {body} }})().then((v) => {{ window.__result = {{ value: v ?? null }}; }},"
        " (e) => { window.__result = { value: { __error: String(e), code: e.code ?? null,"
        " status: e.status ?? null, type: e.type ?? null, param: e.param ?? null } }; });"
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = driver.execute_script("return window.__result;")
        if result is not None:
            return result["value"]
        time.sleep(0.5)
    raise TimeoutError(f"the page did not finish within {timeout} s: {body[:80]}")


def check_page(driver, args, out):
    """The page's API and chat UI, with a model that answers in words."""
    # A file that is not a model is refused, and the loaded model keeps serving.
    out["bad_model"] = run_async(
        driver,
        "await window.sovereign.load(new Blob([new TextEncoder().encode('this is not a model')]));"
        "return { accepted: true };",
    )

    # Greedy tokens through the JS API, as an embedding page would ask for them.
    out["greedy"] = run_async(
        driver,
        "const r = await window.sovereign.completions.create("
        f"{{ prompt: {json.dumps(args.prompt)}, max_tokens: {args.tokens}, temperature: 0 }});"
        "return { text: r.choices[0].text, token_ids: r.sovereign.token_ids,"
        " finish_reason: r.choices[0].finish_reason, usage: r.usage, timings: r.sovereign.timings };",
    )

    # A bad request is refused with OpenAI's error fields, before anything runs.
    out["bad_request"] = run_async(
        driver,
        "await window.sovereign.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }],"
        " temperature: 5, stream: true });"
        "return { accepted: true };",
    )

    # Structured output: the grammar engine runs in the worker too, and a bad schema is refused
    # as the server refuses it.
    answer = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {
                "type": "object",
                "properties": {"answer": {"enum": ["yes", "no"]}},
                "required": ["answer"],
                "additionalProperties": False,
            },
        },
    }
    out["structured"] = run_async(
        driver,
        "const r = await window.sovereign.chat.completions.create({ messages: [{ role: 'user',"
        " content: 'Is the sky blue? Answer in JSON.' }], max_tokens: 16, temperature: 0,"
        f" response_format: {json.dumps(answer)} }});"
        "return { content: r.choices[0].message.content, finish_reason: r.choices[0].finish_reason };",
    )
    # Tool calling: a call with arguments that parse, gathered from the stream by the JS API.
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 30}},
                "required": ["city"],
            },
        },
    }
    out["tool_call"] = run_async(
        driver,
        "const r = await window.sovereign.chat.completions.create({ messages: [{ role: 'user',"
        " content: 'What is the weather in Paris?' }], max_tokens: 40, temperature: 0,"
        f" tools: [{json.dumps(tool)}], tool_choice: 'required' }});"
        "return { message: r.choices[0].message, finish_reason: r.choices[0].finish_reason };",
    )
    out["bad_schema"] = run_async(
        driver,
        "await window.sovereign.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }],"
        " response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'strnig' } } } });"
        "return { accepted: true };",
    )

    # Embeddings through the JS API, and a width the model does not have refused.
    out["embeddings"] = run_async(
        driver,
        "const r = await window.sovereign.embeddings.create({ input: "
        f"{json.dumps(EMBED_TEXTS)} }});"
        "return { vectors: r.data.map((d) => d.embedding), indices: r.data.map((d) => d.index),"
        " usage: r.usage };",
    )
    out["bad_embedding"] = run_async(
        driver,
        "await window.sovereign.embeddings.create({ input: 'hi', dimensions: 8 });"
        "return { accepted: true };",
    )

    # The chat UI: send with Enter, watch the reply stream in, stop it with the Stop button.
    prompt = driver.find_element(By.ID, "prompt")
    prompt.send_keys(args.chat)
    prompt.send_keys(Keys.ENTER)
    wait = WebDriverWait(driver, 600, poll_frequency=0.2)
    reply = ".message.assistant.streaming"
    wait.until(
        lambda d: len(d.find_element(By.CSS_SELECTOR, reply).text.split()) >= args.words
    )
    out["streamed_before_stop"] = driver.find_element(By.CSS_SELECTOR, reply).text
    if args.screenshot:
        driver.save_screenshot(args.screenshot)
    driver.find_element(By.ID, "stop").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, reply))
    out["reply_after_stop"] = driver.find_element(By.CSS_SELECTOR, ".message.assistant").text
    out["stats"] = run_async(driver, "return await window.sovereign.stats();")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--prompt", help="the greedy completion's prompt (required unless --bench-only)")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--screenshot")
    ap.add_argument("--bench")
    ap.add_argument("--skip-kernels", action="store_true")
    # Any model, a synthetic one too: the page's own checks need one that answers in words.
    ap.add_argument("--bench-only", action="store_true",
                    help="load the model and run --bench, nothing else")
    ap.add_argument("--chat", default="Name three colors of the rainbow.")
    ap.add_argument("--words", type=int, default=4, help="words streamed before the screenshot and Stop")
    args = ap.parse_args()
    if args.bench_only:
        if not args.bench:
            ap.error("--bench-only needs --bench")
        if args.screenshot:
            ap.error("--screenshot is taken mid-chat, which --bench-only skips")
        args.skip_kernels = True
    elif args.prompt is None:
        ap.error("--prompt is required unless --bench-only")

    out = {}
    driver = browser()
    try:
        started = time.time()
        driver.get(args.url)
        out["ready"] = run_async(
            driver,
            "await window.sovereignReady;"
            "return { adapter: window.sovereign?.adapter ?? null, model: window.sovereign?.model ?? null,"
            " error: document.getElementById('error').textContent };",
        )
        out["load_seconds"] = time.time() - started
        if not args.bench_only:
            check_page(driver, args, out)
        if args.bench:
            streams, n_prompt, n_gen = (int(v) for v in args.bench.split(","))
            out["bench"] = run_async(
                driver,
                f"return await window.sovereign.bench({{ streams: {streams}, nPrompt: {n_prompt}, nGen: {n_gen} }});",
            )

        if not args.skip_kernels:
            started = time.time()
            driver.get(args.url.rstrip("/") + "/kernels.html")
            out["kernels"] = run_async(driver, "return await window.kernelResults;")
            out["kernels_seconds"] = time.time() - started
    finally:
        out["console"] = [
            e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")
        ]
        driver.quit()
    if not args.skip_kernels:
        # Without the WebGPU flag this Chromium has no adapter: the page must say so.
        driver = browser(webgpu=False)
        try:
            driver.get(args.url)
            out["without_webgpu"] = run_async(
                driver,
                "await window.sovereignReady;"
                "return { notice: !document.getElementById('no-webgpu').hidden,"
                " title: document.getElementById('no-webgpu-title').textContent,"
                " chat_hidden: document.querySelector('main').hidden,"
                " adapter: document.getElementById('adapter').textContent };",
                120,
            )
        finally:
            driver.quit()
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
