"""Convert a zoo model to ExecuTorch, Core ML and TFLite artifacts in an app-ready bundle.

    python -m espnet_mobile.convert --target {executorch,coreml,tflite,all} [--model ID]
        [--precision fp32,fp16,int8] [--qat-checkpoint PATH] [--calibration DIR]
        [--images DIR] [--out DIR] [--force]

Writes ``<out>/<model_id>/manifest.json`` and ``<model_id>_<target>_<precision>.<ext>``.
Every file goes through a temporary name and a rename, and the manifest is
rewritten after each artifact, so an interrupted run leaves a consistent
bundle. Artifacts whose cache key (checkpoint, options, tool versions) is
unchanged are skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import converters
from converters import range_refinement
from espnet_mobile import __version__
from espnet_mobile import bundle as B
from espnet_mobile.console import peak_memory_mb
from espnet_mobile.data import domain_photos as DP
from espnet_mobile.deploy import GRAPH_VERSION
from espnet_mobile.deploy import equalize as EQ
from espnet_mobile.errors import UserError, run_cli
from espnet_mobile.files import sha256_path

MAX_CALIBRATION_IMAGES = 64
IMAGES_ENV = "ESPNET_MOBILE_IMAGES"
DATASETS_ENV = "ESPNET_MOBILE_DATASETS"


@dataclass(frozen=True)
class Job:
    """One artifact to produce."""

    target: str
    precision: str
    delegate: str = ""

    def __post_init__(self) -> None:
        if not self.delegate:
            object.__setattr__(self, "delegate", converters.backend(self.target).default_delegate)

    @property
    def label(self) -> str:
        return B.artifact_label(self.target, self.delegate)


@dataclass
class ConvertOptions:
    targets: list[str]
    model_id: str
    precisions: list[str] | None = None  # None: every precision the target has
    weights: str | None = None
    qat_checkpoint: Path | None = None
    calibration: Path | None = None
    images: Path | None = None
    eval_dataset: str | None = None  # KIND:DIR: score the bundle against labels after converting
    eval_split: str = "val"
    eval_limit: int | None = None
    out: Path = Path("artifacts")
    force: bool = False
    nhwc: bool = False
    extra_delegates: bool = True
    input_size: tuple[int, int] | None = None  # (height, width); None: the zoo's
    jobs: int | None = None  # worker processes for the conversions; None: one per core
    int8_budget: float | None = None  # points int8 may lose (mIoU with eval_dataset, else agreement)
    options: dict[str, Any] = field(default_factory=dict)


def plan_jobs(opts: ConvertOptions, have_int8_data: bool) -> tuple[list[Job], list[str]]:
    """The artifacts to make, and notes about precisions left out by default."""
    jobs: list[Job] = []
    notes: list[str] = []
    for target in opts.targets:
        backend = converters.backend(target)
        supported = backend.precisions
        if opts.precisions is not None:
            bad = [p for p in opts.precisions if p not in supported]
            if bad:
                raise UserError(f"{target} has no {', '.join(bad)} artifact; choose from {','.join(supported)}")
            wanted = list(opts.precisions)
            if "int8" in wanted and not have_int8_data:
                raise UserError("int8 needs calibration images or a QAT checkpoint: pass --calibration DIR "
                                f"(or set ${IMAGES_ENV} / ${DATASETS_ENV}) or --qat-checkpoint PATH")
        else:
            wanted = list(supported)
            if "int8" in wanted and not have_int8_data:
                wanted.remove("int8")
                notes.append(f"{target}: int8 skipped - pass --calibration DIR or --qat-checkpoint PATH")
        jobs += [Job(target, p) for p in wanted]
        if opts.extra_delegates and opts.precisions is None:  # the other delegates, at their default precisions
            for delegate, precisions in list(backend.delegates.items())[1:]:
                jobs += [Job(target, p, delegate) for p in precisions if p != "int8" or have_int8_data]
    return jobs, notes


def calibration_inputs(photos: Path | list[Path], height: int, width: int) -> tuple[list[torch.Tensor], str]:
    """Model inputs from photos (a folder or a list), each also mirrored, and a digest of the files."""
    from espnet_mobile.data.images import list_images, load_rgb
    from espnet_mobile.preprocess import preprocess

    files = (list_images(photos) if isinstance(photos, Path) else list(photos))[:MAX_CALIBRATION_IMAGES]
    digest = hashlib.sha256()
    tensors = []
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
        rgb = load_rgb(f)
        tensors.append(torch.from_numpy(preprocess(rgb, height, width)))
        tensors.append(torch.from_numpy(preprocess(np.ascontiguousarray(rgb[:, ::-1]), height, width)))
    return tensors, digest.hexdigest()


def cache_key(job: Job, manifest: dict, tool_versions: dict[str, str], extra: dict[str, Any]) -> str:
    data = {"job": [job.target, job.delegate, job.precision], "espnet_mobile": __version__,
            "checkpoint": manifest["model"]["checkpoint_sha256"],
            "qat": manifest["model"].get("qat_checkpoint_sha256"), "tools": tool_versions,
            "input": manifest["input"]["shape"], **extra}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def _up_to_date(bundle: Path, manifest: dict, file: str, key: str) -> bool:
    for art in manifest["artifacts"]:
        if art["file"] == file and art["cache_key"] == key:
            path = bundle / file
            return path.exists() and sha256_path(path) == art["sha256"]
    return False


def _tool_versions(job: Job) -> dict[str, str]:
    try:
        return converters.backend(job.target).tool_versions(job.delegate, job.precision)
    except Exception:  # a broken toolchain still gets a cache key; converting then reports the problem
        return {"torch": torch.__version__}


def default_jobs() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Pending:
    """An artifact to convert, with everything phase 2 needs to record it."""

    job: Job
    prefix: str
    name: str
    key: str
    nhwc: bool
    equalization: dict | None
    request: Any  # converters.base.ConversionRequest
    budget: Any = None  # espnet_mobile.budget.Choice, with --int8-budget


@dataclass
class Outcome:
    """What converting one artifact gave: a result, or why not; and the quick check where it runs here."""

    result: Any = None
    seconds: float = 0.0
    quick_check: dict | None = None
    error: str | None = None
    missing_backend: str | None = None


def convert_one(job: Job, request: Any, golden: list, nhwc: bool) -> Outcome:
    """Convert one artifact and check it against the golden vectors (runs here or in a worker process)."""
    from converters.base import ConversionError, MissingBackendError
    from espnet_mobile.console import native_output_captured

    start = time.perf_counter()
    try:
        with native_output_captured(f"{job.label} {job.precision}"):
            result = converters.backend(job.target).convert(request)
            seconds = time.perf_counter() - start
            check = quick_check(job, request.out_path, golden, nhwc) if result.executable_here else None
    except MissingBackendError as err:
        return Outcome(missing_backend=str(err))
    except ConversionError as err:
        return Outcome(error=str(err))
    return Outcome(result=result, seconds=seconds, quick_check=check)


def _worker_init(owner: int) -> None:
    from converters.processes import exit_with_parent
    from espnet_mobile.console import quiet_third_party

    exit_with_parent(owner)
    quiet_third_party()


def _expected_cost(job: Job) -> int:
    """Relative conversion time, so the longest artifacts start first (int8 calibrates and lowers twice)."""
    return 3 if job.precision == "int8" else 1


def run_pending(pending: list[Pending], golden: list, workers: int, log) -> Iterator[tuple[Pending, Outcome]]:
    """Convert each pending artifact; yields as each finishes (here in order, or from a process pool)."""
    if workers <= 1:
        missing: dict[str, str] = {}
        for item in pending:
            if item.job.target in missing:  # one missing toolchain disables its target once
                yield item, Outcome(missing_backend=missing[item.job.target])
                continue
            log(f"{item.prefix}: converting -> {item.name}")
            outcome = convert_one(item.job, item.request, golden, item.nhwc)
            if outcome.missing_backend:
                missing[item.job.target] = outcome.missing_backend
            yield item, outcome
        return
    import concurrent.futures as cf
    import multiprocessing

    order = sorted(pending, key=lambda p: -_expected_cost(p.job))
    # A fresh interpreter (no forked thread pools) with torch's default thread count, as here: int8
    # calibration statistics depend on the thread count, and the artifacts must not depend on --jobs.
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                initargs=(os.getpid(),)) as pool:
        futures = {}
        for item in order:
            log(f"{item.prefix}: converting -> {item.name}")
            futures[pool.submit(convert_one, item.job, item.request, golden, item.nhwc)] = item
        for future in cf.as_completed(futures):
            item = futures[future]
            try:
                yield item, future.result()
            except Exception as err:  # a worker that died (killed, out of memory) fails its artifact only
                yield item, Outcome(error=f"worker process failed: {type(err).__name__}: {err}")


def quick_check(job: Job, path: Path, golden: list[B.GoldenItem], nhwc: bool) -> dict | None:
    """Run the artifact on the golden inputs where a runtime exists here; compare with the reference."""
    from converters import run_artifact
    from espnet_mobile.preprocess import argmax_mask

    outputs = []
    for item in golden:
        out = run_artifact(job.target, job.delegate, path, item.input, nhwc=nhwc)
        if out is None:
            return None
        outputs.append(out)
    # Pooled like the parity check and the apps: max error over all items / max |logit| over all items.
    rel = max(float(np.abs(o - g.logits).max()) for o, g in zip(outputs, golden, strict=True)) / max(
        float(np.abs(g.logits).max()) for g in golden)
    agree = float(np.mean([np.mean(argmax_mask(o) == argmax_mask(g.logits)) for o, g in
                           zip(outputs, golden, strict=True)]))
    return {"max_rel_abs_error": rel, "pixel_agreement": agree, "images": len(golden)}


@dataclass
class ConversionSummary:
    """What ``convert`` produced: the bundle, the manifest record of each artifact made or kept, problems."""

    bundle: Path
    artifacts: list[dict]
    problems: list[str]
    seconds: float = 0.0
    accuracy: dict | None = None  # the manifest's accuracy section, with --eval-dataset

    @property
    def ok(self) -> bool:
        return not self.problems


def run(opts: ConvertOptions, log=print) -> ConversionSummary:
    """Produce the bundle for ``opts`` (see :func:`espnet_mobile.convert_model` for the keyword form)."""
    start = time.perf_counter()
    bundle, records, problems, accuracy = _convert(opts, log)
    return ConversionSummary(bundle, records, problems, round(time.perf_counter() - start, 1), accuracy)


def _convert(opts: ConvertOptions, log) -> tuple[Path, list[dict], list[str], dict | None]:
    import espnet_mobile as em
    from converters.base import ConversionRequest
    from espnet_mobile.deploy import make_deployable
    from espnet_mobile.zoo import get_entry
    from espnet_mobile.zoo.weights import load_into, load_state_dict, resolve_weights

    entry = get_entry(opts.model_id)
    if opts.eval_dataset is not None:  # a bad spec fails now, not after minutes of conversion
        from espnet_mobile.evaluate import parse_dataset

        parse_dataset(opts.eval_dataset, entry)
    if opts.int8_budget is not None and opts.qat_checkpoint is not None:
        raise UserError("--int8-budget chooses layers to keep in float for post-training int8; a QAT checkpoint "
                        "trains every layer in int8 - drop one of --int8-budget and --qat-checkpoint")
    if opts.int8_budget is not None and opts.int8_budget < 0:
        raise UserError(f"--int8-budget is the points int8 may lose, at least 0; got {opts.int8_budget:g}")
    qat = _open_qat_checkpoint(opts, log) if opts.qat_checkpoint is not None else None
    calibration_photos = (DP.folder_photos(opts.calibration, MAX_CALIBRATION_IMAGES) if opts.calibration
                          else DP.domain_photos(entry, "calibration", MAX_CALIBRATION_IMAGES))
    have_int8_data = calibration_photos is not None or opts.qat_checkpoint is not None
    jobs, notes = plan_jobs(opts, have_int8_data)
    for note in notes:
        log(f"note: {note}")
    if opts.int8_budget is not None and not any(j.precision == "int8" for j in jobs):
        raise UserError("--int8-budget applies to int8 artifacts, and none is planned: add int8 to --precision "
                        "and give calibration photos (--calibration DIR or $ESPNET_MOBILE_IMAGES)")
    if qat is not None:
        wrong = sorted({j.target for j in jobs if j.precision == "int8" and j.target != qat.target})
        if wrong:
            raise UserError(f"{opts.qat_checkpoint} was fine-tuned for --target {qat.target} "
                            f"({qat.config.backend}); it cannot make {', '.join(wrong)} int8 - pass --target "
                            f"{qat.target}, or drop --qat-checkpoint and calibrate")

    resolved = resolve_weights(entry, opts.weights)
    model = em.build_model(entry)
    load_into(model, load_state_dict(resolved.path), source=str(resolved.path))
    model.eval()
    height, width = opts.input_size or (entry.input_height, entry.input_width)
    try:
        deployable = make_deployable(model, entry, height=height, width=width)
    except ValueError as err:
        raise UserError(f"--input-size {height}x{width}: {err}") from None
    if (height, width) != (entry.input_height, entry.input_width):
        entry = dataclasses.replace(entry, input_height=height, input_width=width)

    bundle = Path(opts.out) / entry.model_id
    _remove_stale_temporaries(bundle)
    manifest = None
    if (bundle / B.MANIFEST).exists():
        try:
            manifest = B.load_manifest(bundle, verify_files=False)
        except UserError as err:
            log(f"note: existing manifest unusable ({err}); starting a new one")
    qat_sha = sha256_path(Path(opts.qat_checkpoint)) if qat is not None else None
    fresh = B.new_manifest(entry, resolved.sha256, height=height, width=width, qat_sha256=qat_sha)
    if manifest is None or manifest["model"]["checkpoint_sha256"] != resolved.sha256 \
            or manifest["input"] != fresh["input"]:
        manifest = fresh
    manifest["model"]["qat_checkpoint_sha256"] = qat_sha

    golden_photos = (DP.folder_photos(opts.images, B.GOLDEN_COUNT) if opts.images
                     else DP.domain_photos(entry, "check", B.GOLDEN_COUNT)
                     or (DP.folder_photos(opts.calibration, B.GOLDEN_COUNT) if opts.calibration else None))
    t0 = time.perf_counter()
    source, golden = B.make_golden(entry, model, golden_photos.paths if golden_photos else None)
    manifest["golden"] = B.write_golden(bundle, entry, source, golden)
    manifest["golden"]["photos_from"] = golden_photos.description if golden_photos else "synthetic scenes"
    manifest["thresholds"] = B.thresholds()
    B.drop_stale_accuracy(manifest)
    B.write_manifest(bundle, manifest)
    log(f"golden vectors: {len(golden)} inputs with reference logits from "
        f"{manifest['golden']['photos_from']} ({time.perf_counter() - t0:.1f} s)")

    calibration: list[torch.Tensor] | None = None
    calibration_digest = None
    budget_data = None  # espnet_mobile.budget.BudgetData, with --int8-budget
    choices: dict[str, Any] = {}  # quantizer name -> espnet_mobile.budget.Choice
    equalized: tuple[torch.nn.Module, dict] | None = None  # the graph rescaled for post-training int8
    records: list[dict] = []
    problems: list[str] = []
    pending: list[Pending] = []
    # Phase 1, here: cache checks, calibration and int8 equalization once, one request per artifact.
    for index, job in enumerate(jobs, 1):
        name = B.artifact_name(entry.model_id, job.target, job.precision, job.delegate)
        prefix = f"[{index}/{len(jobs)}] {job.label} {job.precision}"
        if job.precision == "int8" and calibration is None and opts.qat_checkpoint is None:
            calibration, calibration_digest = calibration_inputs(calibration_photos.paths, height, width)
            log(f"calibration: {len(calibration)} inputs (each photo and its mirror image) from "
                f"{calibration_photos.description}")
        versions = _tool_versions(job)
        ptq = job.precision == "int8" and qat is None
        extra = {"nhwc": opts.nhwc and job.target == "tflite", "options": opts.options,
                 "calibration": calibration_digest if job.precision == "int8" else None,
                 "writer": converters.backend(job.target).writer_version,
                 "graph": GRAPH_VERSION}
        if ptq:
            extra["equalization"] = EQ.VERSION
            if opts.int8_budget is not None:
                extra["int8_budget"] = opts.int8_budget
                extra["budget_data"] = [opts.eval_dataset, opts.eval_split, opts.eval_limit, str(opts.images or "")]
        key = cache_key(job, manifest, versions, extra)
        if not opts.force and _up_to_date(bundle, manifest, name, key):
            log(f"{prefix}: up to date ({name})")
            records.append(next(a for a in manifest["artifacts"] if a["file"] == name))
            continue
        options = dict(opts.options)
        options["delegate"] = job.delegate
        if job.target == "tflite":
            options["nhwc"] = opts.nhwc
        if job.target == "executorch":
            options["bundle"] = job.delegate == "xnnpack"
            options["bundle_inputs"] = [torch.from_numpy(g.input) for g in golden]
            options["bundle_expected"] = [torch.from_numpy(g.logits) for g in golden]
        module = deployable
        equalization = None
        if ptq:
            if equalized is None:
                t_eq = time.perf_counter()
                rescaled = copy.deepcopy(deployable)
                report = EQ.equalize_for_int8(
                    rescaled, torch.cat([c.reshape(1, *c.shape[-3:]) for c in calibration]))
                equalized = (rescaled, report)
                log(f"int8 equalization: {report['tensors']} tensors rescaled per channel "
                    f"(largest factor {report.get('largest_factor', 1.0)}, {time.perf_counter() - t_eq:.1f} s)")
            module, equalization = equalized
        backend = converters.backend(job.target)
        if backend.rewrite is not None and job.delegate != backend.default_delegate:
            module = backend.rewrite(deployable, job.delegate)
        choice = None
        if ptq and opts.int8_budget is not None:
            if budget_data is None:
                budget_data = _budget_data(opts, entry, height, width)
            choice = _budget_choice(backend, job, choices, module, deployable, calibration, budget_data, opts,
                                    entry, log)
            if choice.layers:
                options[backend.float_layers_option] = list(choice.layers)
        request = ConversionRequest(
            module=module, example_input=torch.from_numpy(golden[0].input), precision=job.precision,
            out_path=bundle / name, model_id=entry.model_id, calibration=calibration,
            qat_module=qat.module if qat is not None and job.precision == "int8" else None,
            labels=list(entry.data.classes), options=options,
            metadata={"author": "espnet-mobile; model by Sachin Mehta et al.", "license": "MIT",
                      "description": f"{entry.model_id}: {entry.arch} semantic segmentation "
                                     f"({entry.data.title}, {entry.num_classes} classes)",
                      "version": __version__},
        )
        pending.append(Pending(job, prefix, name, key, extra["nhwc"], equalization, request, choice))

    # Phase 2: the conversions, in worker processes when --jobs > 1 (each artifact is independent).
    workers = max(1, min(opts.jobs or default_jobs(), len(pending)))
    if pending:
        log(f"converting {len(pending)} artifacts " + (f"in {workers} worker processes" if workers > 1 else "here"))
    disabled: dict[str, str] = {}
    for item, outcome in run_pending(pending, golden, workers, log):
        job, prefix, name = item.job, item.prefix, item.name
        if outcome.missing_backend is not None:
            if job.target not in disabled:
                disabled[job.target] = outcome.missing_backend
                problems.append(f"{job.target} disabled: {outcome.missing_backend}")
            log(f"{prefix}: skipped - {outcome.missing_backend}")
            continue
        budget_record = None
        if opts.int8_budget is not None and job.precision == "int8" and outcome.error is None:
            outcome, budget_record, miss = _meet_budget(item, outcome, golden, budget_data, entry, deployable, log)
            if miss is not None:
                problems.append(miss)
                log(f"{prefix}: failed - {miss}")
                continue
        if outcome.error is not None:
            problems.append(f"{job.label} {job.precision}: {outcome.error}")
            log(f"{prefix}: failed - {outcome.error}")
            continue
        result = outcome.result
        path = bundle / name
        record = {
            "file": name, "target": job.target, "delegate": job.delegate, "precision": job.precision,
            "compute_units": list(result.compute_units), "sha256": sha256_path(path),
            "bytes": B.size_bytes(path), "tool_versions": dict(result.tool_versions),
            "executable_here": bool(result.executable_here),
            "not_executable_reason": result.not_executable_reason,
            "conversion_seconds": round(outcome.seconds, 2), "cache_key": item.key,
            "input_layout": "NHWC" if item.nhwc else "NCHW",
            "quantization": ({"scheme": "pt2e", "source": "qat", "qat_backend": qat.config.backend,
                              "qat_steps": qat.step, "qat_data": qat.config.data}
                             if qat is not None else
                             {"scheme": "pt2e", "calibration_images": len(calibration or []) // 2,
                              "calibration_photos": calibration_photos.description,
                              "source": "calibration", "equalization": item.equalization})
            if job.precision == "int8" else None,
            "report": _jsonable(result.report),
        }
        if budget_record is not None:
            record["quantization"]["budget"] = budget_record
        bpte = path.with_suffix(".bpte")
        if bpte.exists() and job.target == "executorch":
            record["bundled_program"] = {"file": bpte.name, "sha256": sha256_path(bpte)}
        if outcome.quick_check is not None:
            record["quick_check"] = outcome.quick_check
        B.upsert_artifact(manifest, record)
        B.drop_stale_accuracy(manifest)
        B.write_manifest(bundle, manifest)
        records.append(record)
        qc = record.get("quick_check")
        qc_text = (f", vs reference: max err {qc['max_rel_abs_error']:.1e} of max|logit|, "
                   f"argmax agreement {qc['pixel_agreement']:.2%}") if qc else ""
        log(f"{prefix}: done in {outcome.seconds:.1f} s, {record['bytes'] / 1e6:.2f} MB{qc_text}")
        hint = _int8_hint(job, qc, ptq=qat is None, options=opts.options)
        if hint:
            log(f"{prefix}: {hint}")
    if opts.eval_dataset is not None:
        from espnet_mobile.evaluate import evaluate, format_table, write_accuracy

        log(f"accuracy against labels ({opts.eval_dataset}, split {opts.eval_split}):")
        evaluation = evaluate(bundle, opts.eval_dataset, split=opts.eval_split, limit=opts.eval_limit,
                              weights=opts.weights, log=log)
        write_accuracy(bundle, evaluation)
        log(format_table(evaluation))
        problems += [f"{r.artifact} on {r.runtime}: {r.error}" for r in evaluation.records if r.error]
        return bundle, records, problems, evaluation.accuracy_section()
    return bundle, records, problems, None


#: Below this argmax agreement with fp32 on the golden vectors, convert suggests what to try.
INT8_HINT_AGREEMENT = 0.97


def _int8_hint(job: Job, quick_check: dict | None, *, ptq: bool, options: dict[str, Any]) -> str | None:
    """What to try when a post-training int8 artifact agrees poorly with fp32 on its golden vectors."""
    if job.precision != "int8" or not ptq or not quick_check:
        return None
    agreement = quick_check.get("pixel_agreement")
    if agreement is None or agreement >= INT8_HINT_AGREEMENT:
        return None
    tries = [] if options.get(range_refinement.OPTION) else ["--int8-refine-ranges (ranges stretched by rare values)"]
    tries += ["--int8-budget POINTS (layers kept in float)", "a QAT checkpoint (--qat-checkpoint)"]
    return (f"note: int8 agrees with fp32 on only {agreement:.2%} of the golden pixels (below "
            f"{INT8_HINT_AGREEMENT:.0%}); try " + ", or ".join(tries) + "; see docs/quantization.md")


def _budget_data(opts: ConvertOptions, entry, height: int, width: int):
    from espnet_mobile.budget import budget_data

    photos = (DP.folder_photos(opts.images) if opts.images else DP.domain_photos(entry, "check"))
    return budget_data(entry, height, width, eval_dataset=opts.eval_dataset, split=opts.eval_split,
                       limit=opts.eval_limit, photos=photos.paths if photos else None,
                       photos_description=photos.description if photos else "")


def _budget_choice(backend, job: Job, choices: dict, module, deployable, calibration, data, opts, entry, log):
    """The float layers for this int8 job (chosen once per quantizer); a backend that cannot keep layers in
    float gets an empty choice, measured only."""
    from espnet_mobile import budget as BU

    if backend.float_layers_option is None or backend.qat_name is None or job.delegate != backend.default_delegate:
        log(f"note: {job.label} int8 cannot keep chosen layers in float; --int8-budget only checks it")
        return BU.Choice(backend.qat_name or job.target, data.metric, float(opts.int8_budget), data.description,
                         len(data.inputs), float("nan"), float("nan"), float("nan"))
    if backend.qat_name not in choices:
        choices[backend.qat_name] = BU.choose(module, deployable, backend.qat_name, calibration, data,
                                              float(opts.int8_budget), entry, log,
                                              refine=range_refinement.from_options(opts.options))
    return choices[backend.qat_name]


def _meet_budget(item: Pending, outcome: Outcome, golden: list, data, entry, deployable, log):
    """Measure a budgeted int8 artifact; with too few float layers, convert again with more.

    Returns the outcome to record, the manifest's ``budget`` entry, and the problem when the
    budget cannot be met (the artifact is then removed: no poor artifact stays in the bundle).
    """
    import math

    from espnet_mobile import budget as BU

    choice = item.budget
    job = item.job
    backend = converters.backend(job.target)
    record = {"target": job.target, "delegate": job.delegate, "precision": job.precision,
              "input_layout": "NHWC" if item.nhwc else "NCHW"}
    fp32 = choice.fp32
    attempt = 1
    while True:
        measured = BU.measure_artifact(job.target, job.delegate, item.request.out_path, record, data, entry,
                                       deployable)
        if measured is None:
            log(f"{item.prefix}: nothing here runs it; its float layers were chosen by simulation only")
            return outcome, BU.manifest_entry(choice, None, None), None
        value, runtime = measured
        if math.isnan(fp32):  # a backend that keeps no float layers: the simulation was not run
            fp32 = BU.points(BU.scorer_for(data, entry, deployable)(deployable), data.metric)
            choice.fp32 = round(fp32, 4)
        log(f"{item.prefix}: {len(choice.layers)} convs in float ({choice.macs_share:.2%} of conv MACs), "
            f"{BU._unit(data.metric)} {value:.2f} on {runtime} against fp32 {fp32:.2f} "
            f"(budget {choice.budget:g})")
        if fp32 - value <= choice.budget:
            return outcome, BU.manifest_entry(choice, value, runtime), None
        # The artifact lost more than its simulation: aim the simulation higher by that difference.
        target = fp32 - choice.budget + max(0.0, choice.simulated - value)
        if attempt >= BU.MAX_ATTEMPTS or backend.float_layers_option is None or choice.more is None \
                or not choice.more(target):
            for path in (item.request.out_path, Path(item.request.out_path).with_suffix(".bpte")):
                _remove(Path(path))
            return outcome, None, BU.describe_miss(f"{job.label}", choice, value)
        item.request.options[backend.float_layers_option] = list(choice.layers)
        log(f"{item.prefix}: converting again with {len(choice.layers)} convs in float")
        outcome = convert_one(job, item.request, golden, item.nhwc)
        if outcome.error is not None or outcome.result is None:
            return outcome, None, None
        attempt += 1


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _open_qat_checkpoint(opts: ConvertOptions, log):
    """Load a checkpoint of ``python -m espnet_mobile.qat`` and reconcile it with the options.

    The model and input size must be the ones it was trained at (the input size
    defaults to them); without ``--weights`` the golden vectors come from the
    fp32 weights QAT started from (its fine-tuned ``fp32_finetuned.pth`` when it
    had an fp32 phase, else the weights it was given).
    """
    from espnet_mobile.qat.loading import load_qat_module

    qat = load_qat_module(opts.qat_checkpoint)
    cfg = qat.config
    if cfg.model != opts.model_id:
        raise UserError(f"{opts.qat_checkpoint} fine-tunes {cfg.model}; pass --model {cfg.model}")
    size = tuple(cfg.input_size)
    if opts.input_size is None:
        opts.input_size = size
    elif tuple(opts.input_size) != size:
        raise UserError(f"{opts.qat_checkpoint} was trained at {size[0]}x{size[1]}; pass --input-size "
                        f"{size[0]}x{size[1]} (or omit it)")
    if opts.weights is None:
        if qat.fp32_weights and Path(qat.fp32_weights).is_file():
            opts.weights = qat.fp32_weights
        elif cfg.weights:
            opts.weights = cfg.weights
    if qat.phase != "done":
        log(f"note: {opts.qat_checkpoint} is an intermediate checkpoint (QAT step {qat.step} of {cfg.steps})")
    log(f"QAT checkpoint: {cfg.model} for {cfg.backend} at {size[0]}x{size[1]}, step {qat.step}, data {cfg.data}")
    return qat


def _remove_stale_temporaries(bundle: Path) -> None:
    """Hidden temporaries left by an interrupted run (never a listed artifact) are removed."""
    import shutil

    if not bundle.is_dir():
        return
    for path in bundle.rglob(".*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix in (".tmp", ".part"):
            path.unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    """Reports may hold paths, tuples or numpy scalars; keep what JSON can say."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def parse_args(argv: list[str] | None) -> ConvertOptions:
    from espnet_mobile.zoo import DEFAULT_MODEL_ID

    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.convert",
                                     description="Convert a zoo model to mobile artifacts in a bundle.")
    parser.add_argument("--target", default="all", choices=[*converters.names(), "all"],
                        help="backend to convert to (default: all)")
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help=f"zoo id (default {DEFAULT_MODEL_ID})")
    parser.add_argument("--weights", default=None, help="checkpoint path (default: the published one)")
    parser.add_argument("--precision", default=None,
                        help="comma-separated subset of fp32,fp16,int8 (default: all the target has; "
                             "int8 only with calibration data or a QAT checkpoint)")
    parser.add_argument("--qat-checkpoint", type=Path, default=None)
    parser.add_argument("--calibration", type=Path, default=None,
                        help="folder of photos for int8 calibration (default: photos of the model's domain from "
                             f"${IMAGES_ENV} and ${DATASETS_ENV}, e.g. CamVid train frames for street-scene models)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of photos for the golden vectors and quick checks (default: photos of the "
                             "model's domain, see espnet_mobile/domain_photos.py)")
    parser.add_argument("--eval-dataset", default=None, metavar="KIND:DIR",
                        help="after converting, score the reference and every artifact against these labels "
                             "(camvid:DIR, cityscapes:DIR, voc:DIR) and record it in the manifest")
    parser.add_argument("--eval-split", default="val", help="split for --eval-dataset (default val)")
    parser.add_argument("--eval-limit", type=int, default=None, help="score at most N photos of --eval-dataset")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="bundle root (default artifacts/)")
    parser.add_argument("--force", action="store_true", help="convert even if an artifact is up to date")
    parser.add_argument("--input-size", default=None, metavar="HxW",
                        help="fixed input size of the artifacts (default: the zoo's training size)")
    parser.add_argument("--nhwc", action="store_true", help="TFLite artifacts take NHWC input")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="convert N artifacts at a time in worker processes (default: the core count)")
    parser.add_argument("--int8-budget", type=float, default=None, metavar="POINTS",
                        help="keep in float the fewest layers with which int8 loses at most POINTS (mIoU on "
                             "--eval-dataset, else argmax agreement %% with fp32 on domain photos); fails when "
                             "it cannot")
    parser.add_argument("--int8-refine-ranges", action="store_true",
                        help="after calibration, narrow the activation ranges whose width lowers the logit "
                             "error (for heavy-tailed activations; docs/quantization.md); costs minutes")
    parser.add_argument("--no-extra-delegates", action="store_true",
                        help="skip ExecuTorch's Core ML and Vulkan delegates and the GPU-bound TFLite graph")
    args = parser.parse_args(argv)
    precisions = None
    if args.precision:
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
        if bad:
            parser.error(f"unknown precision {', '.join(bad)}; choose from fp32,fp16,int8")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    targets = list(converters.names()) if args.target == "all" else [args.target]
    input_size = None
    if args.input_size:
        try:
            h, w = (int(v) for v in args.input_size.lower().split("x"))
        except ValueError:
            parser.error(f"--input-size must look like 256x256 (height x width), got {args.input_size!r}")
        input_size = (h, w)
    return ConvertOptions(targets=targets, model_id=args.model, precisions=precisions, weights=args.weights,
                          qat_checkpoint=args.qat_checkpoint, calibration=args.calibration, images=args.images,
                          eval_dataset=args.eval_dataset, eval_split=args.eval_split, eval_limit=args.eval_limit,
                          out=args.out, force=args.force, nhwc=args.nhwc,
                          extra_delegates=not args.no_extra_delegates, input_size=input_size, jobs=args.jobs,
                          int8_budget=args.int8_budget,
                          options={range_refinement.OPTION: True} if args.int8_refine_ranges else {})


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        opts = parse_args(argv)
        summary = run(opts)
        print(f"\nbundle {summary.bundle} ({summary.seconds:.1f} s):")
        for r in summary.artifacts:
            where = "runs here" if r["executable_here"] else "not executable here"
            print(f"  {r['file']:<60} {r['bytes'] / 1e6:7.2f} MB  {r.get('conversion_seconds', 0):6.1f} s  {where}")
        own, worker = peak_memory_mb()
        in_workers = f", {worker:.0f} MB in the largest worker" if worker else ""
        print(f"peak memory: {own:.0f} MB in this process{in_workers}")
        for p in summary.problems:
            print(f"problem: {p}", file=sys.stderr)
        return 2 if summary.problems else 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
