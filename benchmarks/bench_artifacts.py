"""Stream one large artifact up and down through the storage backends.

    python benchmarks/bench_artifacts.py                 # 1024 MiB, local and s3 (moto)
    python benchmarks/bench_artifacts.py --size-mb 8     # smoke run
    python benchmarks/bench_artifacts.py --json

For each backend (``local`` in a temporary folder, ``s3`` on a moto server this script
starts) and each mode (``plain``; ``zstd+aes``: zstd level 3 and AES-256-GCM), a fresh
subprocess puts a generated artifact (made on the fly, never held in memory), reads it
back through the verifying stream, and reports throughput and the peak RSS increase over
its own baseline, so cases do not mix. Goal: peak RSS increase under 100 MiB.

Peak RSS is ``VmHWM`` from ``/proc/self/status``, reset between phases through
``/proc/self/clear_refs``; where that is not possible, ``ru_maxrss`` over the whole case.
Note that the moto server keeps objects in its own memory, so its process, not the one
measured, holds the artifact; S3 figures measure mlrig and s3fs, not a real S3's network.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
BACKENDS = ("local", "s3")
MODES = {
    "plain": {},
    "zstd+aes": {"compression": "zstd", "encrypt": True},
}
GOAL_MIB = 100


class GeneratedSource:
    """``size`` bytes made per read: half noise, half runs (so zstd has something to do)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.left = size
        self.rng = random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        half = n // 2
        return self.rng.randbytes(half) + bytes(n - half)


# --- measuring, in the worker --------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _rss_mib() -> float:
    kib = _status_kib("VmRSS")
    if kib is None:  # not Linux: ru_maxrss is the best we have (KiB on Linux, bytes on macOS)
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MiB
    return kib / 1024


def _peak_mib(exact: bool) -> float:
    if exact:
        return (_status_kib("VmHWM") or 0) / 1024
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MiB


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """One backend and mode, in this (fresh) process."""
    from mlrig.artifacts import ArtifactStore, generate_master_key

    if args.backend == "local":
        from mlrig.plugins.storage_local import LocalStorage

        backend: Any = LocalStorage.from_options({"root": args.root}, where="storage.local")
    else:
        from mlrig.plugins.storage_s3 import S3Storage

        s3_options: dict[str, Any] = {"bucket": args.bucket, "endpoint_url": args.endpoint}
        if args.s3_block_mb:
            s3_options["block_size"] = args.s3_block_mb * MiB
        backend = S3Storage.from_options(s3_options, where="storage.s3")
        backend.check()  # builds the client now, outside the measured phases
    options = dict(MODES[args.mode])
    if options.get("encrypt"):
        options["master_key"] = generate_master_key()
    store = ArtifactStore(backend, chunk_size=args.chunk_mb * MiB, **options)
    size = args.size_mb * MiB
    key = f"bench/{args.mode}/artifact.bin"

    exact = _reset_peak()
    base_up = _rss_mib()
    start = time.perf_counter()
    stored = store.put(key, GeneratedSource(size))  # type: ignore[arg-type]
    up_s = time.perf_counter() - start
    peak_up = _peak_mib(exact) - base_up

    exact = _reset_peak()
    base_down = _rss_mib()
    start = time.perf_counter()
    total = 0
    with store.open(key, expected_sha256=stored.sha256, expected_size=size) as stream:
        while chunk := stream.read(args.chunk_mb * MiB):
            total += len(chunk)
    down_s = time.perf_counter() - start
    peak_down = _peak_mib(exact) - base_down
    store.delete(key)
    assert total == size
    return {
        "backend": args.backend,
        "mode": args.mode,
        "size_mib": args.size_mb,
        "stored_mib": round(stored.stored_size / MiB, 1),
        "up_mib_s": round(args.size_mb / up_s, 1),
        "down_mib_s": round(args.size_mb / down_s, 1),
        "peak_rss_up_mib": round(peak_up, 1),
        "peak_rss_down_mib": round(peak_down, 1),
        "peak_exact": exact,
    }


# --- orchestrating, in the parent -----------------------------------------------------------


def _worker(args: argparse.Namespace, backend: str, mode: str, **extra: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--backend",
        backend,
        "--mode",
        mode,
        "--size-mb",
        str(args.size_mb),
        "--chunk-mb",
        str(args.chunk_mb),
        "--s3-block-mb",
        str(args.s3_block_mb or 0),
    ]
    for name, value in extra.items():
        command += [f"--{name}", value]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = f"case {backend}/{mode} failed:\n{done.stderr[-3000:]}"
        raise SystemExit(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'backend':<8} {'mode':<9} {'MiB':>6} {'stored':>8} {'up MiB/s':>9} "
        f"{'down MiB/s':>11} {'peak RSS +MiB up/down':>22}  goal"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = max(r["peak_rss_up_mib"], r["peak_rss_down_mib"]) < GOAL_MIB
        peaks = f"{r['peak_rss_up_mib']:.1f} / {r['peak_rss_down_mib']:.1f}"
        lines.append(
            f"{r['backend']:<8} {r['mode']:<9} {r['size_mib']:>6} {r['stored_mib']:>8.1f} "
            f"{r['up_mib_s']:>9.1f} {r['down_mib_s']:>11.1f} {peaks:>22}  "
            f"{'ok' if ok else 'MISSED'}"
        )
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    backends = [b for b in args.backends.split(",") if b]
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-") as tmp:
        if "local" in backends:
            for mode in MODES:
                rows.append(_worker(args, "local", mode, root=str(Path(tmp) / "local")))
        if "s3" in backends:
            rows += _s3_cases(args)
    return rows


def _s3_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    from mlrig.testing.storage import moto_server

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    rows = []
    with moto_server() as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mlrig-bench")
        for mode in MODES:
            rows.append(_worker(args, "s3", mode, endpoint=endpoint, bucket="mlrig-bench"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="artifact size in MiB")
    parser.add_argument("--chunk-mb", type=int, default=8, help="read/write chunk in MiB")
    parser.add_argument(
        "--s3-block-mb", type=int, default=0, help="S3 part size in MiB (default: backend's)"
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(args)))
        return 0
    rows = run_all(args)
    if args.json:
        print(json.dumps({"goal_peak_rss_mib": GOAL_MIB, "results": rows}, indent=2))
    else:
        print(_table(rows))
    missed = [r for r in rows if max(r["peak_rss_up_mib"], r["peak_rss_down_mib"]) >= GOAL_MIB]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
