"""Latency and size of a bundle's artifacts next to PyTorch eager fp32, measured in one run.

    python -m espnet_mobile.bench artifacts/<model_id> [--rounds 30] [--warmup 5] [--threads N]

Every runner gets the same input; rounds are interleaved (one call of each
runner per round), so load from other processes on a shared machine reaches
all of them. It does not reach them alike: a runtime that uses several threads
loses more to a busy core than a single-threaded one (with a QAT run sharing
this 2-core machine, ExecuTorch int8 measured 25.36 ms against 16.65 ms idle,
TFLite int8 18.17 against 18.39). So the CPU time other processes take is
measured for a second before and after the run, a busy machine is named in a
warning, and each row shows its spread.
Ratios are speed-ups over eager fp32 (higher is faster). The project's targets
are checked and printed, never asserted in unit tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Collection
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
    float_share: float | None = None  # conv MACs an --int8-budget artifact keeps in float
    float_layers: int | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def spread(self) -> float:
        """(90th - 10th percentile) / median: how much the rounds disagree."""
        p10, p90 = np.percentile(self.times_ms, [10, 90])
        return float((p90 - p10) / self.median_ms)


#: CPU time other processes use (in cores) above which the machine counts as busy.
BUSY_CORES = 0.25
#: How long the CPU is watched before and after the run.
SAMPLE_SECONDS = 1.0


def load_warning(busy: float | None, cores: int | None, when: str = "before the run") -> str | None:
    """A warning when other processes kept ``busy`` cores working while this benchmark was idle."""
    if busy is None or busy <= BUSY_CORES:
        return None
    return (f"warning: other processes kept {busy:.2f} of {cores or '?'} cores busy {when}: they compete for "
            "the CPU and slow multi-threaded runtimes more than single-threaded ones, so the ratios are not "
            "those of an idle machine; re-run when it is idle, or pass --threads 1")


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU time since boot from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores kept busy by other processes over ``seconds`` while this process sleeps (None off Linux).

    Measured rather than taken from the load average, which lags by a minute and so
    still counts a conversion that has just finished.
    """
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def benchmark(bundle: Path, rounds: int = 30, warmup: int = 5, threads: int | None = None,
              weights: str | None = None, only: Collection[str] | None = None) -> tuple[list[Row], list[str]]:
    """Interleaved rounds of eager fp32 and each artifact (only those named in ``only``, if given)."""
    import espnet_mobile as em
    from converters import load_runner
    from espnet_mobile.deploy import normalize_reference
    from espnet_mobile.zoo import get_entry
    from espnet_mobile.zoo.weights import load_into, load_state_dict, resolve_weights

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
        if only is not None and art["file"] not in only:
            continue
        if not art["executable_here"]:
            notes.append(f"{art['file']}: not executable here ({art.get('not_executable_reason') or 'no runtime'})")
            continue
        runner = load_runner(art["target"], art["delegate"], bundle / art["file"],
                             nhwc=art["input_layout"] == "NHWC", num_threads=threads)
        if runner is None:
            notes.append(f"{art['file']}: no runner for {label} here")
            continue
        budget = (art.get("quantization") or {}).get("budget") or {}
        row = Row(label, art["precision"], art["bytes"], art.get("conversion_seconds"),
                  float_share=budget.get("float_macs_share"),
                  float_layers=len(budget["float_layers"]) if "float_layers" in budget else None)
        runners.append((row, runner))
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
    lines = [f"{'artifact':<28} {'prec':<5} {'median ms':>10} {'spread':>7} {'speed-up':>9} {'size MB':>8} "
             f"{'convert s':>10} {'float':>12}", "-" * 96]
    for r in rows:
        size = f"{r.bytes / 1e6:.2f}" if r.bytes else "-"
        conv = f"{r.conversion_seconds:.1f}" if r.conversion_seconds is not None else "-"
        kept = f"{r.float_share:.2%}/{r.float_layers}" if r.float_share is not None else "-"
        lines.append(f"{r.name:<28} {r.precision:<5} {r.median_ms:>10.2f} {r.spread:>6.0%} "
                     f"{eager / r.median_ms:>8.2f}x {size:>8} {conv:>10} {kept:>12}")
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
        before = load_warning(busy_cores(), os.cpu_count())
        if before:
            print(before, file=sys.stderr)
        rows, notes = benchmark(args.bundle, args.rounds, args.warmup, args.threads, args.weights)
        after = load_warning(busy_cores(), os.cpu_count(), "after the run")
        print(f"{args.bundle}: {args.rounds} interleaved rounds, median latency per artifact "
              "(spread: 90th - 10th percentile, over the median)")
        print(format_table(rows))
        if any(r.float_share is not None for r in rows):
            print("  float: share of conv MACs / convs kept in float by --int8-budget (the manifest's budget entry)")
        for note in notes:
            print(f"  {note}")
        for warning in (before, after):
            if warning:
                print(f"\n{warning}")
        print("\ntargets:")
        for desc, value, target, met in target_checks(rows):
            cmp = ">=" if "speed-up" in desc else "<="
            print(f"  {'PASS' if met else 'MISS'}  {desc}: {value:.2f} (target {cmp} {target})")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
