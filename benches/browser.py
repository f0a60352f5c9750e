"""Decode speed in the browser against native on the same machine, in one run.

    scripts/build-web && cargo build --release && python3 benches/browser.py [--streams 1] [-p 64] [-n 48] [-r 1] [--lavapipe]

Both sides measure the same thing the same way: `streams` concurrent greedy streams of `p` random
prompt tokens through the engine's scheduler, tokens/s over the window in which all of them
decode (`sovereign bench --streams` natively, `engine.bench()` in the page, both calling
`sovereign::bench::streams`). The browser is headless Chromium with WebGPU (tests/browser/demo.py).
"""

import argparse
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time
from statistics import median

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "sovereign")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Chromium's own software Vulkan driver: natively, the engine can run on the very rasterizer the
# browser's WebGPU uses, which separates what the browser costs from what the driver costs.
SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"


def native(streams, p, n, model, env=None):
    cmd = [BIN, "bench", "--streams", str(streams), "-p", str(p), "-n", str(n)]
    if model:
        cmd += ["-m", model]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (status {run.returncode}):\n{run.stderr}")
    out = run.stdout
    print(out, file=sys.stderr)
    # The row of the table for this stream count: | streams | ... | tokens/s | ...
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == str(streams):
            numbers = [float(x) for c in cells[1:] for x in re.findall(r"^[0-9.]+$", c)]
            if numbers:
                return numbers[0], out
    raise SystemExit(f"cannot read the native result from:\n{out}")


# Chromium gives WebGPU the machine's lavapipe only through Dawn's OpenGL ES backend on ANGLE
# on Vulkan: a WebGPU compatibility-mode adapter, made the default by --force-webgpu-compat. Its
# own Vulkan backend leaves lavapipe out (Mesa 22.3 lacks dynamic indexing of image arrays, 22.3
# and 25.0 lack semaphores exported as file descriptors, and 26.1, which has them, still fails
# Chromium's check for importing external images), so without these flags the page gets
# SwiftShader. On Mesa 25 and 26 this route is the faster one (benches/RESULTS.md).
# Mesa names the manifest with the architecture in some releases and without it in others.
LAVAPIPE_ICDS = sorted(glob.glob("/usr/share/vulkan/icd.d/lvp_icd*.json"))
LAVAPIPE_FLAGS = (
    "--use-angle=vulkan --use-webgpu-adapter=opengles --force-webgpu-compat"
    " --enable-webgpu-developer-features"  # names the adapter in the report
)


def browser(streams, p, n, model, env=None):
    port = free_port()
    cmd = [BIN, "web", "--port", str(port), "--dir", os.path.join(ROOT, "web", "dist")]
    if model:
        cmd += ["-m", model]
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if server.poll() is not None:
                raise SystemExit(f"sovereign web exited with status {server.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"sovereign web did not listen on port {port} within 10 s")
        run = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tests", "browser", "demo.py"),
             "--url", f"http://127.0.0.1:{port}/", "--bench", f"{streams},{p},{n}", "--bench-only"],
            capture_output=True, text=True, env={**os.environ, **(env or {})},
        )
    finally:
        server.kill()
    if run.returncode != 0:
        raise SystemExit(f"the browser run failed (status {run.returncode}):\n{run.stderr}")
    report = json.loads(run.stdout)
    ready, bench = report["ready"], report.get("bench") or {}
    if ready.get("error") or not ready.get("adapter") or "__error" in bench:
        raise SystemExit(f"the page did not benchmark: {json.dumps({'ready': ready, 'bench': bench})}"
                         f"\nconsole: {report.get('console')}")
    return bench["tokens_per_second"], ready["adapter"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("-p", type=int, default=64)
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("-m", "--model")
    ap.add_argument("-r", "--rounds", type=int, default=1,
                    help="rounds of browser, native and native-as-in-the-browser, run in turn so that"
                    " a slow spell of a shared machine falls on all three; the ratios use the medians")
    ap.add_argument("--lavapipe", action="store_true",
                    help="give the page lavapipe (a compatibility-mode adapter) instead of SwiftShader")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("-r must be at least 1")
    env = None
    if args.lavapipe:
        if not LAVAPIPE_ICDS:
            ap.error("--lavapipe: no lavapipe manifest in /usr/share/vulkan/icd.d (apt-get install mesa-vulkan-drivers)")
        # Flags already in SOVEREIGN_CHROME_FLAGS (for example Dawn toggles) are kept.
        flags = (LAVAPIPE_FLAGS + " " + os.environ.get("SOVEREIGN_CHROME_FLAGS", "")).strip()
        env = {"SOVEREIGN_CHROME_FLAGS": flags, "VK_DRIVER_FILES": LAVAPIPE_ICDS[0]}

    web, default, same = [], [], []
    same_label = None
    for _ in range(args.rounds):
        web_tps, adapter = browser(args.streams, args.p, args.n, args.model, env)
        web.append(web_tps)
        default.append(native(args.streams, args.p, args.n, args.model)[0])
        if args.lavapipe:
            # The compatibility adapter has no subgroups and no f16: the same kernels natively.
            same_env = {"SOVEREIGN_NO_SUBGROUPS": "1", "SOVEREIGN_NO_F16": "1",
                        "VK_DRIVER_FILES": LAVAPIPE_ICDS[0]}
            same_label = "lavapipe without subgroups and f16, as in the browser"
        elif os.path.exists(SWIFTSHADER_ICD):
            # The same kernels natively: with subgroups only where the page had them.
            # Both variables: newer Vulkan loaders prefer VK_DRIVER_FILES when it is set.
            same_env = {"VK_ICD_FILENAMES": SWIFTSHADER_ICD, "VK_DRIVER_FILES": SWIFTSHADER_ICD}
            if not adapter.get("subgroups"):
                same_env["SOVEREIGN_NO_SUBGROUPS"] = "1"
            same_label = "SwiftShader Vulkan, as in the browser"
        if same_label:
            same.append(native(args.streams, args.p, args.n, args.model, same_env)[0])

    name = adapter.get("name") or " ".join(filter(None, [adapter.get("vendor"), adapter.get("architecture")]))
    if adapter.get("subgroups"):
        name += ", subgroups"
    def fmt(xs):
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"{args.streams} stream(s), -p {args.p} -n {args.n}, {args.rounds} round(s); t/s per round, then the medians' ratio")
    print(f"| native | t/s | browser ({name}) t/s | browser / native |")
    print("|---|---|---|---|")
    print(f"| default adapter | {fmt(default)} | {fmt(web)} | {median(web) / median(default):.2f} |")
    if same:
        print(f"| {same_label} | {fmt(same)} | {fmt(web)} | {median(web) / median(same):.2f} |")


if __name__ == "__main__":
    main()
