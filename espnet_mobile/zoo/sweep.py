"""Sweep the zoo to int8: convert each model, measure each int8 artifact, write one table (docs/zoo.md).

    python -m espnet_mobile.zoo.sweep [--models IDS|FAMILIES] [--targets executorch,tflite,coreml]
        [--out artifacts] [--table docs/zoo.md] [--json PATH] [--limit 16] [--eval-dataset camvid:DIR]

int8 has to keep its accuracy for every model family, and only a table over the whole
zoo shows which family or size loses it. Every step is the project's own: ``convert.run``
(its cache, so a resumed sweep converts nothing twice), ``parity.check_parity`` on photos
of the model's domain, ``evaluate`` where labels of that domain exist, ``bench.benchmark``
(interleaved rounds) for latency, ``zoo.flops`` for the share of MACs kept in float, and
``noise_floor`` for how stable the fp32 argmax itself is on the same photos (``--noise-floor-only``
adds that figure to models already in the table without converting anything).
A model that fails is a row with its error, never the end of the sweep. Results live in a JSON
file beside the table (``docs/zoo.json``), committed with it: a later run keeps the rows of the
models and backends it does not sweep, so the table grows run by run (``--targets coreml`` over
a swept model adds its Core ML row and keeps the others).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fnmatch
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from espnet_mobile.errors import UserError, run_cli

DEFAULT_TARGETS = ("executorch", "tflite", "coreml")
#: The runtime that measures each target here (Core ML: our MIL interpreter; Apple's runtime needs macOS).
RUNTIMES = {"executorch": "executorch-python", "tflite": "litert-cpu", "coreml": "mil-reference-interpreter"}
LABELS = {"executorch": "ExecuTorch XNNPACK", "tflite": "LiteRT CPU", "coreml": "Core ML (MIL interpreter)"}
#: ``--models`` families: a name and the zoo entries it selects.
FAMILIES = {
    "all": lambda e: True,
    "espnet": lambda e: e.arch in ("espnet", "espnet_c"),  # ESPNet v1, with and without its decoder
    "espnetc": lambda e: e.arch == "espnet_c",
    "espnetv2": lambda e: e.arch == "espnetv2",
    "cityscapes": lambda e: e.dataset == "cityscapes",
    "camvid": lambda e: e.dataset == "camvid",
    "pascal": lambda e: e.dataset == "voc",
}
TARGET_AGREEMENT = 0.97  # the floor for int8 argmax agreement with fp32


@dataclass
class SweepOptions:
    models: list[str]
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    out: Path = Path("artifacts")
    table: Path | None = Path("docs/zoo.md")
    json: Path | None = None  # None: beside the table (docs/zoo.json), else <out>/sweep.json
    limit: int = 16  # photos for the agreement check
    eval_dataset: str | None = None
    eval_limit: int | None = None
    jobs: int = 1
    input_size: tuple[int, int] | None = None  # None: each model's own
    rounds: int = 20
    refine_ranges: bool = False  # convert --int8-refine-ranges
    noise_floor_only: bool = False  # measure only the fp32 noise floor of models already swept
    command: str = "python -m espnet_mobile.zoo.sweep"

    @property
    def json_path(self) -> Path:
        """The results the table is made from: kept beside it, so that a partial re-run cannot lose rows."""
        if self.json is not None:
            return self.json
        return Path(self.table).with_suffix(".json") if self.table is not None else Path(self.out) / "sweep.json"


@dataclass
class BackendResult:
    target: str
    int8_agreement: float | None = None
    fp32_agreement: float | None = None
    miou_int8: float | None = None
    float_share: float | None = None
    float_layers: list[str] = field(default_factory=list)
    narrowed_ranges: int | None = None  # activation ranges narrowed by --int8-refine-ranges; None: not refined
    error: str | None = None
    date: str = ""  # when this backend was measured ("": the model's date)
    commit: str = ""


@dataclass
class ModelResult:
    model_id: str
    input_size: str
    date: str = ""
    commit: str = ""
    photos: str = ""
    backends: list[BackendResult] = field(default_factory=list)
    reference_miou: float | None = None
    labels: str = ""  # which labels scored the mIoU, or why there is none
    eager_ms: float | None = None
    executorch_int8_ms: float | None = None
    bench_note: str = ""
    fp32_noise_floor: float | None = None  # fp32 argmax agreement with itself under 1-level input noise
    noise_floor_measured: str = ""  # "date commit"
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @staticmethod
    def from_json(data: dict) -> ModelResult:
        data = dict(data)
        data["backends"] = [BackendResult(**b) for b in data.get("backends", [])]
        return ModelResult(**data)


def select_models(specs: list[str]) -> list[str]:
    """Zoo ids named by ids, families (``espnet``, ``espnetv2``, ...) or globs, in zoo order."""
    from espnet_mobile.zoo import ZOO

    wanted: set[str] = set()
    for spec in specs:
        if spec in ZOO:
            wanted.add(spec)
        elif spec in FAMILIES:
            wanted |= {k for k, e in ZOO.items() if FAMILIES[spec](e)}
        elif any(c in spec for c in "*?[") and fnmatch.filter(ZOO, spec):
            wanted |= set(fnmatch.filter(ZOO, spec))
        else:
            raise UserError(f"--models: {spec!r} is no zoo id, family or matching pattern; families: "
                            f"{', '.join(FAMILIES)} (python -m espnet_mobile.zoo lists the ids)")
    return [k for k in ZOO if k in wanted]


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0][:240] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}".replace("|", "/")


def git_commit() -> str:
    """The commit the sweep ran at, marked when the code had uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+uncommitted" if dirty else head


def float_share(art: dict, macs: dict[str, tuple[float, bool]]) -> tuple[float, list[str]]:
    """Share of the graph's conv MACs in the layers an int8 artifact kept in float, and those layers."""
    report = art.get("report") or {}
    quantization = report.get("quantization")  # ExecuTorch: a dict; LiteRT: the scheme's name
    nodes = {**((quantization if isinstance(quantization, dict) else {}).get("fp32_nodes") or {}),
             **(report.get("float_convs") or {})}
    layers = sorted({(v or {}).get("module") or name for name, v in nodes.items()})
    total = sum(m for m, _ in macs.values())
    kept = sum(macs[layer][0] for layer in layers if layer in macs)
    return (kept / total if total else 0.0), layers


def narrowed_ranges(art: dict) -> int | None:
    """How many activation ranges range refinement narrowed in an int8 artifact; None when it did not run."""
    report = art.get("report") or {}
    quantization = report.get("quantization")
    record = report.get("range_refinement") or (quantization.get("range_refinement")
                                                if isinstance(quantization, dict) else None)
    return None if record is None else len(record.get("narrowed") or {})


def sweep_model(model_id: str, opts: SweepOptions, log) -> ModelResult:
    """Convert one model (cache first) and measure each target's int8 artifact; errors become the result's."""
    import torch

    import espnet_mobile as em
    from converters import range_refinement
    from espnet_mobile import bench, convert
    from espnet_mobile.deploy import make_deployable
    from espnet_mobile.parity import check_parity
    from espnet_mobile.zoo import get_entry
    from espnet_mobile.zoo.flops import conv_macs_by_module

    entry = get_entry(model_id)
    h, w = opts.input_size or (entry.input_height, entry.input_width)
    result = ModelResult(model_id, f"{h}x{w}", dt.date.today().isoformat(), git_commit())
    backends = {t: BackendResult(t, date=result.date, commit=result.commit) for t in opts.targets}
    result.backends = list(backends.values())
    start = time.perf_counter()

    def indent(line: str) -> None:
        log(f"    {line}")

    try:
        log(f"  converting {', '.join(opts.targets)} fp32 and int8 (cached artifacts are kept)")
        summary = convert.run(convert.ConvertOptions(
            targets=list(opts.targets), model_id=model_id, precisions=["fp32", "int8"], out=Path(opts.out),
            extra_delegates=False, input_size=opts.input_size, jobs=opts.jobs,
            options={range_refinement.OPTION: True} if opts.refine_ranges else {}), log=indent)
    except Exception as err:  # the whole model is lost: record why and go on with the next
        result.errors.append(f"convert: {one_line(err)}")
        result.seconds = round(time.perf_counter() - start, 1)
        return result
    for problem in summary.problems:
        target = next((t for t in opts.targets if problem.startswith(t)), None)
        if target is not None and backends[target].error is None:
            backends[target].error = problem.replace("|", "/")[:300]
    arts = {(a["target"], a["precision"]): a for a in summary.artifacts}
    runnable = [t for t in opts.targets if (t, "int8") in arts]

    if runnable:
        log(f"  agreement with fp32 on {', '.join(RUNTIMES[t] for t in runnable)} (up to {opts.limit} photos)")
        try:
            parity = check_parity(summary.bundle, limit=opts.limit, only=",".join(RUNTIMES[t] for t in runnable),
                                  culprit=False, log=indent)
            result.photos = parity.summary["data"]
            for rec in parity.records:
                target = rec.target
                if target not in backends or not rec.executed or rec.runtime != RUNTIMES[target]:
                    continue
                if rec.metrics is None:
                    backends[target].error = f"{rec.precision} on {rec.runtime}: {'; '.join(rec.failures)}"[:300]
                elif rec.precision in ("fp32", "int8"):
                    setattr(backends[target], f"{rec.precision}_agreement", rec.metrics["pixel_agreement"])
        except Exception as err:
            result.errors.append(f"parity: {one_line(err)}")

    try:
        measure_noise_floor(result, opts, log)
    except Exception as err:
        result.errors.append(f"noise floor: {one_line(err)}")

    kind = opts.eval_dataset.partition(":")[0] if opts.eval_dataset else None
    if kind is None or kind != entry.dataset:
        result.labels = f"no {entry.data.title} labels here"
    elif runnable:
        log(f"  mIoU against {opts.eval_dataset} labels")
        try:
            from espnet_mobile.evaluate import evaluate

            ev = evaluate(summary.bundle, opts.eval_dataset, limit=opts.eval_limit,
                          only={RUNTIMES[t] for t in runnable}, write=True, log=indent)
            result.reference_miou = ev.reference().miou
            result.labels = f"{entry.data.title} {ev.split}, {ev.images} photos"
            for r in ev.records:
                if r.target in backends and r.precision == "int8" and r.runtime == RUNTIMES[r.target]:
                    backends[r.target].miou_int8 = r.miou
        except Exception as err:
            result.errors.append(f"evaluate: {one_line(err)}")

    try:
        deployable = make_deployable(em.build_model(entry), entry, height=h, width=w)
        macs = conv_macs_by_module(deployable, torch.zeros(1, 3, h, w))
        for target in runnable:
            backends[target].float_share, backends[target].float_layers = float_share(arts[(target, "int8")], macs)
            backends[target].narrowed_ranges = narrowed_ranges(arts[(target, "int8")])
    except Exception as err:
        result.errors.append(f"float share: {one_line(err)}")

    if ("executorch", "int8") in arts and opts.rounds > 0:
        log(f"  latency: ExecuTorch int8 against PyTorch eager fp32, {opts.rounds} interleaved rounds")
        try:
            busy = bench.busy_cores()
            rows, _ = bench.benchmark(summary.bundle, rounds=opts.rounds, warmup=3,
                                      only={arts[("executorch", "int8")]["file"]})
            if len(rows) > 1:
                result.eager_ms, result.executorch_int8_ms = round(rows[0].median_ms, 2), round(rows[1].median_ms, 2)
                result.bench_note = (f"spread {rows[0].spread:.0%} / {rows[1].spread:.0%}; other processes kept "
                                     f"{busy:.2f} cores busy" if busy is not None else "")
        except Exception as err:
            result.errors.append(f"bench: {one_line(err)}")
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def measure_noise_floor(result: ModelResult, opts: SweepOptions, log) -> None:
    """Set ``result``'s fp32 noise floor, measured on the photos ``parity`` checks the model on."""
    from espnet_mobile import noise_floor

    log(f"  fp32 noise floor: the reference against itself with inputs moved by up to "
        f"{noise_floor.DEFAULT_LEVELS} level, {noise_floor.DEFAULT_SEEDS} draws per photo")
    h, w = (int(v) for v in result.input_size.split("x"))
    floor = noise_floor.measure(result.model_id, limit=opts.limit, input_size=(h, w))
    result.fp32_noise_floor = floor.agreement
    result.photos = result.photos or floor.photos
    result.noise_floor_measured = f"{dt.date.today().isoformat()} {git_commit()}"


def noise_floor_model(model_id: str, opts: SweepOptions, log) -> ModelResult:
    """``--noise-floor-only``: a result that carries nothing but the model's noise floor."""
    result = ModelResult(model_id, _input_size(model_id, opts), dt.date.today().isoformat(), git_commit())
    start = time.perf_counter()
    try:
        measure_noise_floor(result, opts, log)
    except Exception as err:
        result.errors.append(f"noise floor: {one_line(err)}")
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_table(results: dict[str, ModelResult], runs: list[dict], opts: SweepOptions) -> str:
    """docs/zoo.md: how each figure was measured, one row per model and backend, what is not swept yet."""
    from espnet_mobile.zoo import ZOO

    latest = runs[-1] if runs else {}
    lines = ["# The zoo in int8", "",
             "Generated by `python -m espnet_mobile.zoo.sweep`; regenerate it rather than edit it. Latest run: "
             f"`{latest.get('command', opts.command)}` on {latest.get('date', '-')} at commit "
             f"{latest.get('commit', '-')}. Each row keeps the date and commit it was measured at.", "",
             "## How each figure was measured", "",
             "- **int8 agreement**: share of pixels whose argmax class from the int8 artifact, run on the runtime "
             "named in the backend column, equals the PyTorch fp32 reference's (`espnet_mobile.parity`), pooled over "
             "photos of the model's domain (listed under the table): street scenes for Cityscapes and CamVid models "
             "(Cityscapes frames, then CamVid val frames), the sample photos for PASCAL models. int8 is calibrated "
             "on other photos (CamVid train frames for street models). "
             f"Target: at least {TARGET_AGREEMENT:.0%}; a `*` marks a figure below it.",
             "- **fp32 agreement**: the same for the fp32 artifact: a check of the conversion itself.",
             "- **fp32 noise floor**: the PyTorch fp32 reference against itself, on the same photos, when every "
             "input value moves by -1, 0 or +1 levels of 255 at random (2 draws per photo; "
             "`python -m espnet_mobile.noise_floor`). Where fp32's own argmax flips on the smallest change an 8-bit "
             "image can carry, an int8 agreement near or below this says as much about fp32's indecision on "
             "those photos as about int8.",
             "- **mIoU fp32 -> int8**: `espnet_mobile.evaluate` against labels: the PyTorch fp32 reference, then the "
             "int8 artifact on that runtime. Only where labels of the model's domain are here (CamVid val); there "
             "are no Cityscapes or VOC labels on this machine.",
             "- **float share**: multiply-accumulates of the convolutions the int8 artifact keeps in float, over "
             "all convolution MACs of the deployable graph (counted as in `espnet_mobile.zoo.flops`; transposed "
             "convolutions included). The float layers are those the quantizer reports: ExecuTorch's `fp32_nodes` "
             "(high-gain convolutions, per-channel affines before a PReLU), LiteRT's float islands. Ops other "
             "than convolutions that a runtime runs in float (XNNPACK's PReLU) are not counted.",
             "- **range refinement**: rows swept with `--int8-refine-ranges` were converted with "
             "`convert --int8-refine-ranges` (activation ranges narrowed by the logit error; docs/quantization.md); "
             "the per-model notes say how many ranges each such artifact narrowed.",
             "- **ExecuTorch int8 vs eager fp32**: `espnet_mobile.bench` in one process: median latency of "
             "interleaved rounds of PyTorch eager fp32 and the ExecuTorch XNNPACK int8 artifact on the same input, "
             "default thread counts, on a 2-core machine shared with other jobs (its load is listed under the "
             "table); speed-up = eager / int8.", "",
             "| model | input | backend | int8 agreement | fp32 agreement | fp32 noise floor | mIoU fp32 -> int8 "
             "| float share | ExecuTorch int8 vs eager fp32 | measured |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    met = total = 0
    notes = []
    for model_id in [k for k in ZOO if k in results]:
        r = results[model_id]
        if not r.backends or (r.errors and all(b.int8_agreement is None for b in r.backends)):
            when = f"{r.date} {r.commit}"
            lines.append(f"| {model_id} | {r.input_size} | - | failed: {'; '.join(r.errors) or 'no result'} "
                         f"| | | | | | {when} |")
            continue
        for b in r.backends:
            if b.int8_agreement is not None:
                total += 1
                met += b.int8_agreement >= TARGET_AGREEMENT
            mark = "*" if b.int8_agreement is not None and b.int8_agreement < TARGET_AGREEMENT else ""
            agreement = f"{_pct(b.int8_agreement)}{mark}" if b.error is None or b.int8_agreement is not None \
                else f"failed: {b.error}"
            miou = f"{r.reference_miou:.2f} -> {b.miou_int8:.2f}" if None not in (r.reference_miou, b.miou_int8) \
                else "-"
            share = "-" if b.float_share is None else f"{b.float_share:.2%}"
            speed = "-"
            if b.target == "executorch" and r.executorch_int8_ms and r.eager_ms:
                speed = f"{r.executorch_int8_ms:.1f} vs {r.eager_ms:.1f} ms ({r.eager_ms / r.executorch_int8_ms:.2f}x)"
            when = f"{b.date or r.date} {b.commit or r.commit}"
            lines.append(f"| {model_id} | {r.input_size} | {LABELS.get(b.target, b.target)} | {agreement} "
                         f"| {_pct(b.fp32_agreement)} | {_pct(r.fp32_noise_floor)} | {miou} | {share} | {speed} "
                         f"| {when} |")
        detail = [f"photos: {r.photos or '-'}", f"labels: {r.labels or '-'}"]
        detail += [f"{LABELS.get(b.target, b.target)} float layers: {', '.join(b.float_layers)}"
                   for b in r.backends if b.float_layers]
        detail += [f"{LABELS.get(b.target, b.target)} activation ranges narrowed by the output error "
                   f"(--int8-refine-ranges): {b.narrowed_ranges}" for b in r.backends if b.narrowed_ranges is not None]
        detail += [f"load: {r.bench_note}"] if r.bench_note else []
        detail += [f"noise floor measured {r.noise_floor_measured}"] \
            if r.noise_floor_measured and r.noise_floor_measured != f"{r.date} {r.commit}" else []
        detail += [f"error: {e}" for e in r.errors]
        notes.append(f"- `{model_id}` ({r.seconds:.0f} s): " + "; ".join(detail))
    missing = [k for k in ZOO if k not in results]
    lines += ["", f"int8 agreement at or above {TARGET_AGREEMENT:.0%}: {met} of {total} (model, backend) pairs.", "",
              "## Per model", "", *notes, "",
              "## Not swept yet", "", (", ".join(f"`{k}`" for k in missing) if missing else "none: every zoo model "
                                       "has a row."), "", "## Runs", ""]
    lines += [f"- {run['date']} at {run['commit']}: `{run['command']}` ({', '.join(run['models'])})" for run in runs]
    return "\n".join(lines) + "\n"


def load_previous(path: Path) -> tuple[dict[str, ModelResult], list[dict]]:
    """Results of earlier sweeps, so a run over some models keeps the others' rows."""
    if not path.is_file():
        return {}, []
    try:
        data = json.loads(path.read_text())
        return {k: ModelResult.from_json(v) for k, v in data["models"].items()}, list(data.get("runs", []))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read {path} as sweep results ({one_line(err)}): written by another version of "
                        "espnet-mobile? Sweep with the version that wrote it, or pass another --json") from None


def merge_result(old: ModelResult | None, new: ModelResult) -> ModelResult:
    """``new``, plus the backends of ``old`` that this run did not measure (same input size only).

    Model-level figures that only some targets produce (latency: ExecuTorch; reference mIoU)
    are carried over when this run has none, so that the kept rows still show theirs.
    """
    if old is None or old.input_size != new.input_size:
        return new
    measured = {b.target for b in new.backends}
    kept = [replace(b, date=b.date or old.date, commit=b.commit or old.commit)
            for b in old.backends if b.target not in measured]
    order = {t: i for i, t in enumerate(DEFAULT_TARGETS)}
    backends = sorted(new.backends + kept, key=lambda b: order.get(b.target, len(order)))
    merged = replace(new, backends=backends)
    if new.eager_ms is None and "executorch" not in measured:
        merged.eager_ms, merged.executorch_int8_ms, merged.bench_note = \
            old.eager_ms, old.executorch_int8_ms, old.bench_note
    if new.reference_miou is None and any(b.miou_int8 is not None for b in kept):
        merged.reference_miou, merged.labels = old.reference_miou, old.labels
    merged.photos = new.photos or old.photos
    if new.fp32_noise_floor is None:
        merged.fp32_noise_floor, merged.noise_floor_measured = old.fp32_noise_floor, old.noise_floor_measured
    return merged


def with_noise_floor(old: ModelResult, new: ModelResult) -> ModelResult:
    """``old`` with the noise floor of ``new`` (a ``--noise-floor-only`` result); nothing else changes.

    A floor measured at another input size or on other photos than ``old``'s agreement is not
    comparable with it and is dropped."""
    if new.fp32_noise_floor is None or new.input_size != old.input_size or \
            (old.photos and new.photos and not old.photos.startswith(new.photos)):
        return old
    return replace(old, fp32_noise_floor=new.fp32_noise_floor, noise_floor_measured=new.noise_floor_measured)


@contextlib.contextmanager
def _locked(json_path: Path):
    """Hold an exclusive lock on the folder of ``json_path`` while its results are read, merged and
    written: sweeps of different models run in parallel (one per core) share one results file.
    The folder, not a lock file, so that nothing is left beside the table."""
    import fcntl
    import os

    json_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(json_path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def run(opts: SweepOptions, log=print) -> dict[str, ModelResult]:
    """Sweep ``opts.models``; after each model the JSON and the table are rewritten (atomically).

    The results file is read again before each write, under a lock, so that rows another sweep
    wrote in the meantime are kept."""
    from espnet_mobile.files import write_json_atomic, write_text_atomic

    load_previous(opts.json_path)  # a broken results file stops the run before any conversion
    # A run lists the models it has finished, so an interrupted run does not claim the rest.
    this_run = {"command": opts.command, "date": dt.date.today().isoformat(), "commit": git_commit(),
                "started": dt.datetime.now().isoformat(timespec="seconds"), "models": []}
    swept: dict[str, ModelResult] = {}
    for index, model_id in enumerate(opts.models, 1):
        log(f"[{index}/{len(opts.models)}] {model_id}")
        if opts.noise_floor_only:
            with _locked(opts.json_path):
                old = load_previous(opts.json_path)[0].get(model_id)
            if old is None or old.input_size != _input_size(model_id, opts):
                log(f"    skipped: no sweep result of {model_id} at {_input_size(model_id, opts)} to add the "
                    "noise floor to; sweep it first")
                continue
            result = noise_floor_model(model_id, opts, log)
        else:
            result = sweep_model(model_id, opts, log)
        swept[model_id] = result
        figures = ", ".join([f"{b.target} int8 {_pct(b.int8_agreement)}" for b in result.backends]
                            + [f"fp32 noise floor {_pct(result.fp32_noise_floor)}"])
        log(f"[{index}/{len(opts.models)}] {model_id}: {figures} ({result.seconds:.0f} s)"
            + "".join(f"\n    error: {e}" for e in result.errors + [b.error for b in result.backends if b.error]))
        with _locked(opts.json_path):
            results, runs = load_previous(opts.json_path)
            if opts.noise_floor_only:
                if model_id not in results:  # removed by another sweep in the meantime
                    continue
                merged = with_noise_floor(results[model_id], result)
                if merged is results[model_id]:
                    log(f"    {model_id}: floor not recorded: measured at {result.input_size} on "
                        f"{result.photos or 'no photos'}, the row at {merged.input_size} on {merged.photos}")
                results[model_id] = merged
            else:
                results[model_id] = merge_result(results.get(model_id), result)
            this_run["models"] = list(swept)
            runs = [r for r in runs if r.get("started") != this_run["started"] or r["command"] != opts.command]
            runs.append(this_run)
            write_json_atomic(opts.json_path, {"models": {k: asdict(v) for k, v in results.items()}, "runs": runs})
            if opts.table is not None:
                write_text_atomic(opts.table, format_table(results, runs, opts))
    return swept


def _input_size(model_id: str, opts: SweepOptions) -> str:
    """The input size a model is swept at, as the results record it ("HxW")."""
    from espnet_mobile.zoo import get_entry

    entry = get_entry(model_id)
    h, w = opts.input_size or (entry.input_height, entry.input_width)
    return f"{h}x{w}"


def parse_args(argv: list[str]) -> SweepOptions:
    import converters

    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.zoo.sweep",
                                     description="Convert zoo models to int8, measure them, write a table.")
    parser.add_argument("--models", default="all", help=f"comma-separated ids, families ({', '.join(FAMILIES)}) "
                        "or patterns like 'espnetv2_s_0.5_*' (default all)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="bundle root, reused across runs")
    parser.add_argument("--table", type=Path, default=Path("docs/zoo.md"), help="markdown table to write")
    parser.add_argument("--json", type=Path, default=None,
                        help="results, merged across runs (default: beside --table, docs/zoo.json)")
    parser.add_argument("--limit", type=int, default=16, help="photos for the agreement check (default 16)")
    parser.add_argument("--eval-dataset", default=None, metavar="KIND:DIR", help="labels for mIoU (camvid:DIR)")
    parser.add_argument("--eval-limit", type=int, default=None, help="score at most N labelled photos")
    parser.add_argument("--jobs", type=int, default=1, help="conversion processes per model (default 1)")
    parser.add_argument("--input-size", default=None, metavar="HxW", help="every model at this size (default: own)")
    parser.add_argument("--rounds", type=int, default=20, help="bench rounds; 0 skips latency (default 20)")
    parser.add_argument("--int8-refine-ranges", action="store_true",
                        help="convert with --int8-refine-ranges (minutes more per int8 artifact)")
    parser.add_argument("--noise-floor-only", action="store_true",
                        help="convert nothing: add the fp32 noise floor to models already in the table")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in converters.names()]
    if bad or not targets:
        raise UserError(f"--targets: unknown {', '.join(bad) or 'nothing'}; "
                        f"choose from {', '.join(converters.names())}")
    for name in ("limit", "jobs", "eval_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    size = None
    if args.input_size:
        try:
            size = tuple(int(v) for v in args.input_size.lower().split("x"))
            assert len(size) == 2
        except (ValueError, AssertionError):
            raise UserError(f"--input-size must look like 256x512, got {args.input_size!r}") from None
    if args.eval_dataset:
        from espnet_mobile import data
        from espnet_mobile.evaluate import LABELLED_KINDS

        if data.parse_spec(args.eval_dataset).kind not in LABELLED_KINDS:
            raise UserError(f"--eval-dataset needs labels: {', '.join(k + ':DIR' for k in LABELLED_KINDS)}")
    models = select_models([m.strip() for m in args.models.split(",") if m.strip()])
    return SweepOptions(models, targets, args.out, args.table, args.json, args.limit, args.eval_dataset,
                        args.eval_limit, args.jobs, size, args.rounds, args.int8_refine_ranges,
                        args.noise_floor_only, command=shlex.join(["python", "-m", "espnet_mobile.zoo.sweep", *argv]))


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every model and backend gave its figures, 1 when one failed, 2 for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        results = run(parse_args(argv))
        failed = [k for k, r in results.items() if r.errors or any(b.error for b in r.backends)]
        print(f"swept {len(results)} models" + (f"; with errors: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
