#!/usr/bin/env python3
"""Measure the load generator's own receive ceiling, to show it is not the bottleneck.

    python bench/ceiling.py [--out DIR] [--n 100,1000,5000] [--batch 1,4]

``gen/wsblast`` (pinned where the server would be, CPU 0) accepts N WebSocket
clients and then does nothing but write pre-built broadcast frames to them, K
frames per write(); ``gen/wsgen`` (CPU 1) receives them exactly as it does in S1,
with no publisher. The frames/s it sustains, and how much of its core that takes,
is the most any server can be credited with at that N and that many frames per
client read. Appends to ``DIR/ceiling.jsonl`` and adds the table to
``DIR/results.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import run


def measure(a: argparse.Namespace, n: int, batch: int, tokens: Path) -> dict[str, Any]:
    """One blaster + generator pair; returns the generator's JSON plus labels."""
    port = run.free_port()
    seconds = a.warmup + a.duration + 3
    blaster = subprocess.Popen(
        [
            *run.cpu_prefix(a.server_cpu),
            str(run.WSBLAST),
            "--port",
            str(port),
            "-n",
            str(n),
            "--seconds",
            str(seconds),
            "--batch",
            str(batch),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not run.port_open(port):
            if blaster.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("wsblast did not start")
            time.sleep(0.02)
        argv = [
            *run.cpu_prefix(a.gen_cpu),
            str(run.WSGEN),
            "--scenario",
            "s1",
            "--publishers",
            "0",
            "--port",
            str(port),
            "--tokens",
            str(tokens),
            "-n",
            str(n),
            "--server-pgid",
            str(blaster.pid),
            "--duration",
            str(a.duration),
            "--warmup",
            str(a.warmup),
            "--drain",
            "0",
        ]
        result = run.Generator(argv, timeout=seconds + 90).result()
    finally:
        run.stop_group(blaster, grace=seconds + 5)
        _, err = blaster.communicate(timeout=10)
    result.update(
        peer="generator-ceiling",
        batch=batch,
        blaster=(err.strip().splitlines() or [""])[-1],
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=run.HERE / "results" / "ceiling")
    p.add_argument("--n", default="100,1000,5000")
    p.add_argument("--batch", default="1,4", help="frames per write()")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--gen-cpu", default="1")
    p.add_argument("--tries", type=int, default=2, help="re-run a disturbed pair")
    p.add_argument("--retry-wait-pct", type=float, default=3.0)
    a = p.parse_args()
    if not 0 < a.duration <= 120:
        p.error("--duration must be in (0, 120]")
    a.out.mkdir(parents=True, exist_ok=True)
    run.build_generator()
    sizes = [int(x) for x in a.n.split(",") if x]
    # wsblast does not verify tokens; wsgen only needs one distinct line per client.
    tokens = a.out / "ceiling-tokens.txt"
    tokens.write_text("".join(f"blast-token-{i}\n" for i in range(max(sizes))))
    for n in sizes:
        for batch in (int(x) for x in a.batch.split(",") if x):
            for attempt in range(1, a.tries + 1):
                r = measure(a, n, batch, tokens)
                r["attempt"] = attempt
                with (a.out / "ceiling.jsonl").open("a") as f:
                    f.write(json.dumps(r) + "\n")
                c = r["cpu"]
                print(
                    f"N={n} {batch} frame(s)/write: {r['deliveries_per_s']:.0f} frames/s, "
                    f"generator CPU {c['gen_pct']:.0f}%, {r['frames_per_read']:.1f} frames/read, "
                    f"errors {r['errors']['total']}, wait {c['server_wait_pct']:.1f}/"
                    f"{c['gen_wait_pct']:.1f}%, other {c['other_pct']:.0f}%",
                    flush=True,
                )
                if run.disturbed(r) <= a.retry_wait_pct:
                    break
    print(run.write_report(a.out))


if __name__ == "__main__":
    main()
