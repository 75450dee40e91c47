"""Soak and fault test (`make soak`): minutes of mixed load on the real server, with bad inputs, vanished
and stalled clients and a poison tile, while the server's memory, threads and open files are sampled.

Fails (exit 1) when an answer comes back for the wrong request, any 5xx escapes other than the poison
tile's 503, an expected status is not the one answered, or memory, threads or open files keep growing.
The poison tile is bench.simulated_device's --poison-slide: every forward pass holding one of its tiles fails,
as a device error would, and the server must isolate it from the tiles batched with it.

    python -m bench.soak [--minutes 2] [--clients 8] [--json build/soak/soak.json]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import write_figures
from kit.artifacts.builder import package
from kit.endpoints.samples import sample_png, wire_record
from kit.local import free_port, wait_healthy

POISON = "poison-slide"
JSON = {"content-type": "application/json"}
# Growth allowed between the second and the last quarter of the run (after warm-up).
RSS_GROWTH_MB, RSS_GROWTH_FRACTION = 40.0, 0.10
THREAD_GROWTH, FD_GROWTH = 4, 16


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)  # "scenario status"
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, scenario: str, status: int, problem: str | None = None) -> None:
        with self.lock:
            self.statuses[f"{scenario} {status}"] += 1
            if problem is not None and len(self.problems) < 50:
                self.problems.append(f"{scenario}: {problem}")


def tile(slide: str, index: int) -> dict[str, Any]:
    return {**wire_record("h1", "embedding", patch_idx=index), "slide_name": slide, "x": index * 7}


def matches(answer: dict[str, Any], sent: dict[str, Any]) -> bool:
    echoed = all(answer.get(key) == sent[key] for key in ("slide_name", "x", "patch_idx"))
    return echoed and len(answer.get("output", ())) == 1536


def scenarios(url: str, port: int) -> dict[str, Callable[[httpx.Client, random.Random, Tally], None]]:
    """name -> one request of that kind, checked. Each writes its outcome into the tally."""
    png = sample_png(224)

    def single(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        sent = tile(f"s{rng.randrange(10**9)}", rng.randrange(10**6))
        response = client.post(f"{url}/invocations", content=orjson.dumps(sent), headers=JSON)
        ok = response.status_code == 200 and matches(response.json(), sent)
        tally.note("single", response.status_code, None if ok else f"{response.status_code} {response.text[:200]}")

    def list_with_poison(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        sent = [tile(f"s{rng.randrange(10**9)}", i) for i in range(rng.randrange(2, 9))]
        poisoned = rng.randrange(len(sent))
        sent[poisoned]["slide_name"] = POISON
        response = client.post(f"{url}/invocations", content=orjson.dumps(sent), headers=JSON)
        answers = response.json() if response.status_code == 200 else []
        ok = len(answers) == len(sent) and all(
            (a.get("status") == 503) if i == poisoned else matches(a, s)
            for i, (a, s) in enumerate(zip(answers, sent, strict=True))
        )
        tally.note("list with poison", response.status_code, None if ok else response.text[:200])

    def poison_alone(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        response = client.post(f"{url}/invocations", content=orjson.dumps(tile(POISON, 0)), headers=JSON)
        tally.note("poison alone", response.status_code, None if response.status_code == 503 else response.text[:200])

    def jsonlines(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        sent = [tile(f"b{rng.randrange(10**9)}", i) for i in range(5)]
        body = b"\n".join(orjson.dumps(s) for s in sent)
        response = client.post(f"{url}/invocations", content=body, headers={"content-type": "application/jsonlines"})
        answers = [json.loads(line) for line in response.text.splitlines()] if response.status_code == 200 else []
        ok = len(answers) == 5 and all(matches(a, s) for a, s in zip(answers, sent, strict=True))
        tally.note("json lines", response.status_code, None if ok else response.text[:200])

    def gzipped(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        sent = tile("gz", rng.randrange(10**6))
        response = client.post(
            f"{url}/invocations",
            content=gzip.compress(orjson.dumps(sent)),
            headers={**JSON, "content-encoding": "gzip"},
        )
        ok = response.status_code == 200 and matches(response.json(), sent)
        tally.note("gzip", response.status_code, None if ok else response.text[:200])

    def metadata(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        response = client.post(f"{url}/invocations", json={"model_name": "tissue-seg", "mode": "metadata"})
        ok = response.status_code == 200 and response.json().get("tile_size") == [512, 512]
        tally.note("metadata", response.status_code, None if ok else response.text[:200])

    bad_bodies: list[tuple[bytes, int]] = [
        (orjson.dumps({**tile("bad", 0), "image_data": "@@"}), 400),
        (orjson.dumps({**tile("bad", 0), "image_data": base64.b64encode(png[:2000]).decode()}), 400),
        (orjson.dumps({**tile("bad", 0), "model_name": "h7"}), 400),
        (orjson.dumps({**tile("bad", 0), "model_name": "m-optimus"}), 404),
        (b'{"model_name": "h1", "mode": "embedding", "x": ' + b"9" * 300 + b"}", 400),
        (b'{"model_name": "\\ud800", "mode": "embedding"}', 400),
        (b"[" * 50_000, 400),
        (b"{", 400),
    ]

    def bad_input(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        body, expected = rng.choice(bad_bodies)
        response = client.post(f"{url}/invocations", content=body, headers=JSON)
        ok = response.status_code == expected and response.json().get("field")
        tally.note(f"bad input ({expected})", response.status_code, None if ok else response.text[:200])

    def over_limit(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        response = client.post(f"{url}/invocations", content=b" " * (7 * 1024 * 1024), headers=JSON)
        tally.note("over limit", response.status_code, None if response.status_code == 413 else response.text[:200])

    def vanished(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        body = orjson.dumps(tile("gone", 0))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )  # and hang up without reading
        tally.note("vanished client", 0)

    def stalled(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: soak\r\nContent-Length: 100\r\n\r\n{")
            closed = sock.recv(1024) == b""  # the server must drop it after READ_TIMEOUT_S
        tally.note("stalled upload", 0, None if closed else "the server answered a stalled upload")

    return {
        "single": single,
        "list with poison": list_with_poison,
        "poison alone": poison_alone,
        "json lines": jsonlines,
        "gzip": gzipped,
        "metadata": metadata,
        "bad input": bad_input,
        "over limit": over_limit,
        "vanished client": vanished,
        "stalled upload": stalled,
    }


WEIGHTS = {
    "single": 40,
    "list with poison": 6,
    "poison alone": 3,
    "json lines": 6,
    "gzip": 4,
    "metadata": 4,
    "bad input": 14,
    "over limit": 1,
    "vanished client": 3,
    "stalled upload": 1,
}


def sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "t": time.monotonic(),
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
    }


def growth(samples: list[dict[str, float]], key: str) -> tuple[float, float]:
    """Median of the second quarter (after warm-up) and of the last quarter."""
    quarter = max(len(samples) // 4, 1)
    middle = statistics.median(s[key] for s in samples[quarter : 2 * quarter] or samples)
    last = statistics.median(s[key] for s in samples[-quarter:])
    return middle, last


def soak(minutes: float, clients: int, workdir: Path, seed: int) -> dict[str, Any]:
    model_dir = package(["h1", "tissue-seg"], workdir / "artifact", demo=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "READ_TIMEOUT_S": "2",
        "MAX_BATCH_WAIT_MS": "5",
    }
    serve_args = ["--model-dir", str(model_dir), "--port", str(port)]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.simulated_device", "--poison-slide", POISON, *serve_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(url, process)
            return _run(url, port, process.pid, minutes, clients, seed) | {"server_log": str(log_path)}
        finally:
            process.terminate()
            process.wait(timeout=60)


def _run(url: str, port: int, pid: int, minutes: float, clients: int, seed: int) -> dict[str, Any]:
    kinds = scenarios(url, port)
    names, weights = list(WEIGHTS), list(WEIGHTS.values())
    tally = Tally()
    deadline = time.monotonic() + minutes * 60
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(1.0):
            samples.append(sample(pid))

    def client_loop(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                name = rng.choices(names, weights)[0]
                try:
                    kinds[name](client, rng, tally)
                except (httpx.HTTPError, OSError) as exc:
                    tally.note(name, -1, f"{type(exc).__name__}: {exc}")

    threading.Thread(target=sampler, daemon=True).start()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    time.sleep(1.5)  # the last vanished and stalled connections are dropped
    samples.append(sample(pid))
    metrics = httpx.get(f"{url}/metrics").text
    server_errors = [
        line for line in metrics.splitlines() if line.startswith("optimus_requests_total") and 'status="5' in line
    ]
    stray_5xx = [line for line in server_errors if 'status="503"' not in line and not line.endswith(" 0.0")]
    checks = {
        "answers match their requests and expected statuses": not tally.problems,
        "no 5xx but the poison tile's 503": not stray_5xx,
    }
    for key, allowed in (("rss_mb", None), ("threads", THREAD_GROWTH), ("open_files", FD_GROWTH)):
        middle, last = growth(samples, key)
        limit = middle + (max(RSS_GROWTH_MB, middle * RSS_GROWTH_FRACTION) if allowed is None else allowed)
        checks[f"{key} flat ({middle:.0f} -> {last:.0f}, limit {limit:.0f})"] = last <= limit
    return {
        "minutes": minutes,
        "clients": clients,
        "requests": sum(tally.statuses.values()),
        "statuses": dict(sorted(tally.statuses.items())),
        "problems": tally.problems,
        "stray_5xx": stray_5xx,
        "samples": samples,
        "checks": checks,
        "passed": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("build/soak"))
    parser.add_argument("--json", type=Path, default=Path("build/soak/soak.json"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = soak(args.minutes, args.clients, args.workdir, args.seed)
    write_figures(args.json, report)
    print(f"soak: {report['requests']} requests in {args.minutes:g} min from {args.clients} clients")
    for name, count in report["statuses"].items():
        print(f"  {name}: {count}")
    for problem in report["problems"][:10]:
        print(f"  problem: {problem}")
    for line in report["stray_5xx"]:
        print(f"  stray 5xx: {line}")
    for check, passed in report["checks"].items():
        print(f"  {'ok  ' if passed else 'FAIL'} {check}")
    print("soak passed" if report["passed"] else "soak FAILED", f"(details in {args.json})")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
