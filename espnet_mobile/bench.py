"""Latency and size of a bundle's artifacts next to PyTorch eager fp32, measured in one run.

    python -m espnet_mobile.bench artifacts/<model_id> [--rounds 30] [--warmup 5] [--threads N]

Every runner gets the same input; rounds are interleaved (one call of each
runner per round), so load from other processes on a shared machine affects
all of them alike. Ratios are speed-ups over eager fp32 (higher is faster).
The project's targets are checked and printed, never asserted in unit tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from espnet_mobile import bundle as B
from espnet_mobile.errors import run_cli


@dataclass
class Row:
    name: str
    precision: str
    bytes: int | None
    conversion_seconds: float | None
    times_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def benchmark(bundle: Path, rounds: int = 30, warmup: int = 5, threads: int | None = None,
              weights: str | None = None) -> tuple[list[Row], list[str]]:
    import espnet_mobile as em
    from espnet_mobile.deploy import normalize_reference
    from espnet_mobile.runtimes import load_runner
    from espnet_mobile.weights import load_into, load_state_dict, resolve_weights
    from espnet_mobile.zoo import get_entry

    manifest = B.load_manifest(bundle)
    entry = get_entry(manifest["model_id"])
    if threads:
        torch.set_num_threads(threads)
    model = em.build_model(entry)
    path = resolve_weights(entry, weights).path
    load_into(model, load_state_dict(path), source=str(path))
    model.eval()
    x = B.read_tensor(bundle, manifest["golden"]["items"][0]["input"]).copy()
    normalized = normalize_reference(torch.from_numpy(x), entry.normalization)

    def eager(_: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(normalized).numpy()

    runners = [(Row("pytorch eager (reference)", "fp32", None, None), eager)]
    notes = []
    for art in manifest["artifacts"]:
        label = B.artifact_label(art["target"], art["delegate"])
        if not art["executable_here"]:
            notes.append(f"{art['file']}: not executable here ({art.get('not_executable_reason') or 'no runtime'})")
            continue
        runner = load_runner(art["target"], art["delegate"], bundle / art["file"],
                             nhwc=art["input_layout"] == "NHWC", num_threads=threads)
        if runner is None:
            notes.append(f"{art['file']}: no runner for {label} here")
            continue
        runners.append((Row(label, art["precision"], art["bytes"], art.get("conversion_seconds")), runner))
    for _, run in runners:
        for _ in range(warmup):
            run(x)
    for _ in range(rounds):
        for row, run in runners:
            start = time.perf_counter()
            run(x)
            row.times_ms.append((time.perf_counter() - start) * 1e3)
    return [row for row, _ in runners], notes


def target_checks(rows: list[Row]) -> list[tuple[str, float, float, bool]]:
    """(description, measured, target, met) for the project's speed and size targets."""
    by = {(r.name, r.precision): r for r in rows}
    eager = by[("pytorch eager (reference)", "fp32")].median_ms
    checks = []

    def speedup(name: str, precision: str, target: float, base: float, base_name: str) -> None:
        row = by.get((name, precision))
        if row:
            value = base / row.median_ms
            checks.append((f"{name} {precision} speed-up over {base_name}", value, target, value >= target))

    speedup("executorch", "int8", 2.0, eager, "eager fp32")
    speedup("executorch", "fp32", 1.0, eager, "eager fp32")
    if ("tflite", "fp32") in by:
        speedup("tflite", "int8", 1.5, by[("tflite", "fp32")].median_ms, "tflite fp32")
    for name in ("executorch", "tflite"):
        fp32, int8 = by.get((name, "fp32")), by.get((name, "int8"))
        if fp32 and int8 and fp32.bytes and int8.bytes:
            ratio = int8.bytes / fp32.bytes
            checks.append((f"{name} int8 bytes / fp32 bytes", ratio, 0.35, ratio <= 0.35))
    return checks


def format_table(rows: list[Row]) -> str:
    eager = rows[0].median_ms
    lines = [f"{'artifact':<28} {'prec':<5} {'median ms':>10} {'speed-up':>9} {'size MB':>8} {'convert s':>10}",
             "-" * 75]
    for r in rows:
        size = f"{r.bytes / 1e6:.2f}" if r.bytes else "-"
        conv = f"{r.conversion_seconds:.1f}" if r.conversion_seconds is not None else "-"
        lines.append(f"{r.name:<28} {r.precision:<5} {r.median_ms:>10.2f} {eager / r.median_ms:>8.2f}x "
                     f"{size:>8} {conv:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.bench",
                                     description="Benchmark a bundle's artifacts against PyTorch eager fp32.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: theirs)")
    parser.add_argument("--weights", default=None, help="checkpoint for the eager reference (default: published)")
    args = parser.parse_args(argv)

    def body() -> int:
        rows, notes = benchmark(args.bundle, args.rounds, args.warmup, args.threads, args.weights)
        print(f"{args.bundle}: {args.rounds} interleaved rounds, median latency per artifact")
        print(format_table(rows))
        for note in notes:
            print(f"  {note}")
        print("\ntargets:")
        for desc, value, target, met in target_checks(rows):
            cmp = ">=" if "speed-up" in desc else "<="
            print(f"  {'PASS' if met else 'MISS'}  {desc}: {value:.2f} (target {cmp} {target})")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
