"""Parity: run every artifact on every runtime this machine has and compare with the reference.

    python -m espnet_mobile.parity artifacts/<model_id> [--images DIR | --dataset KIND:DIR | --synthetic N]
        [--report DIR] [--only NAME,...] [--limit N]

One record per (artifact, runtime, compute unit) goes to ``parity.json``,
``report.md`` and ``report.html`` in the report folder, and a summary into the
bundle's manifest. Executed checks are judged against ``thresholds.json``;
artifacts that only run on a device get ``executed: false`` with the reason
and the commands that run the same check there. Exit code 1 when an executed
check misses its threshold, 2 for bad input.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from espnet_mobile import bundle as B
from espnet_mobile import metrics as M
from espnet_mobile.errors import UserError
from espnet_mobile.parity.records import Record, Reference

DEVICE_STEPS = {
    "coreml": "on a Mac or iPhone: open ios_demo (SegmentationKit), add the bundle, run the "
              "'Accuracy check' screen or `swift test` with ESPNET_MOBILE_BUNDLE=<bundle> on macOS",
    "executorch": "on Android: adb push <bundle> /data/local/tmp/b && adb shell /data/local/tmp/et_runner "
                  "/data/local/tmp/b/<model>.bpte --verify-bundled (see converters/executorch/cpp_runner/README.md)",
    "tflite": "on Android: install android_demo with the bundle in assets/bundle and run the 'Accuracy check' "
              "screen, or `./gradlew connectedAndroidTest`",
}
# Compute units each kind of artifact targets on a device but that nothing here can execute.
DEVICE_ONLY: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    ("coreml", "coreml"): [
        ("coreml-runtime", "CPU", "the Core ML runtime exists only on Apple platforms"),
        ("coreml-runtime", "GPU", "the Core ML runtime exists only on Apple platforms"),
        ("coreml-runtime", "ANE", "the Core ML runtime and the Neural Engine exist only on Apple devices"),
    ],
    ("executorch", "coreml"): [
        ("executorch-coreml", "CPU/GPU/ANE", "the ExecuTorch Core ML delegate runs only on Apple platforms"),
    ],
    ("executorch", "vulkan"): [
        ("executorch-vulkan", "GPU", "no ExecuTorch runtime with the Vulkan backend and no GPU on this machine"),
    ],
    ("executorch", "xnnpack"): [
        ("executorch-qnn", "NPU", "Qualcomm's QNN SDK cannot be downloaded here; the XNNPACK artifact runs on CPU"),
    ],
    ("tflite", "cpu"): [
        ("litert-npu-device", "NPU", "ahead-of-time NPU compilation needs Qualcomm/MediaTek SDKs that cannot be "
                                     "downloaded here"),
    ],
}


def load_samples(args: argparse.Namespace, entry, height: int, width: int) -> tuple[str, list]:
    from espnet_mobile import data
    from espnet_mobile.data.domain_photos import domain, domain_photos
    from espnet_mobile.data.images import load_rgb

    if args.dataset:
        spec = data.parse_spec(args.dataset)
        if spec.kind in ("synthetic", "images"):
            raise UserError("--dataset takes cityscapes:DIR, voc:DIR or camvid:DIR; use --images or --synthetic")
    elif args.images:
        spec = data.DataSpec("images", Path(args.images))
        if not spec.path.is_dir():
            raise UserError(f"image folder {spec.path} does not exist")
    elif args.synthetic is None and (choice := domain_photos(entry, "check", args.limit)) is not None:
        samples = [data.Sample(p.stem, load_rgb(p), None) for p in choice.paths]
        return f"{choice.description} ({domain(entry)}, the model's domain)", samples
    else:
        spec = data.DataSpec("synthetic", None, args.synthetic or 8)
    samples = list(data.iter_samples(spec, split=args.split, height=height, width=width,
                                     num_classes=entry.num_classes, limit=args.limit))
    if not samples:
        raise UserError(f"no samples in {spec.describe()}")
    return spec.describe(), samples


def bundle_reference(bundle: Path, manifest: dict, entry, weights: str | None) -> torch.nn.Module:
    """The fp32 reference model a bundle was converted from, checked by the checkpoint's sha256."""
    import espnet_mobile as em
    from espnet_mobile.zoo.weights import load_into, load_state_dict, resolve_weights

    converted_from = manifest["model"]["checkpoint_sha256"]
    if weights is None and converted_from != entry.sha256:
        raise UserError(f"{bundle} was converted from a checkpoint other than the published one (sha256 "
                        f"{converted_from[:12]}...); pass that checkpoint with --weights PATH")
    model = em.build_model(entry)
    resolved = resolve_weights(entry, weights)
    if resolved.sha256 != converted_from:
        raise UserError(f"reference checkpoint {resolved.path} (sha256 {resolved.sha256[:12]}...) is not the one "
                        f"{bundle} was converted from (sha256 {converted_from[:12]}...); pass that checkpoint "
                        "with --weights PATH")
    load_into(model, load_state_dict(resolved.path), source=str(resolved.path))
    return model.eval()


def reference_outputs(entry, model, samples, height: int, width: int) -> list[Reference]:
    from espnet_mobile.deploy import reference_forward
    from espnet_mobile.preprocess import argmax_mask, preprocess, resize_mask_nearest

    refs = []
    for s in samples:
        x = preprocess(s.rgb, height, width)
        logits = reference_forward(model, entry, torch.from_numpy(x)).numpy()
        mask = argmax_mask(logits)
        label = None if s.label is None else resize_mask_nearest(s.label, *mask.shape)
        refs.append(Reference(s.name, s.rgb, x, logits, mask, label))
    return refs


def judge(record: Record, refs: list[Reference], thresholds: dict, reference_miou: float | None) -> None:
    m = record.metrics or {}
    t = dict(thresholds.get(record.judged_as or record.precision, {}))
    record.thresholds = t
    failures = []
    if m["pixel_agreement"] < t.get("min_pixel_agreement", 0):
        failures.append(f"pixel agreement {m['pixel_agreement']:.4%} < {t['min_pixel_agreement']:.2%}")
    if "max_rel_abs_error" in t:
        peak = max(float(np.abs(r.logits).max()) for r in refs)
        if m["max_abs_error"] > t["max_rel_abs_error"] * peak:
            failures.append(f"max abs error {m['max_abs_error']:.3g} > {t['max_rel_abs_error']:g} x max|logit| "
                            f"({t['max_rel_abs_error'] * peak:.3g})")
    if "max_miou_drop_points" in t and m.get("miou_vs_labels") is not None and reference_miou is not None:
        drop = reference_miou - m["miou_vs_labels"]
        if drop > t["max_miou_drop_points"]:
            failures.append(f"mIoU vs labels {drop:.2f} points below fp32 > {t['max_miou_drop_points']}")
    record.failures = failures
    record.passed = not failures


def execute(record: Record, runner, refs: list[Reference], num_classes: int) -> None:
    outputs, times = [], []
    for r in refs:
        start = time.perf_counter()
        out = np.asarray(runner(r.input), dtype=np.float32)
        times.append((time.perf_counter() - start) * 1e3)
        if out.shape != r.logits.shape:
            raise RuntimeError(f"output shape {out.shape} differs from the reference {r.logits.shape}")
        outputs.append(out)
    masks = [o.argmax(1)[0].astype(np.uint8) for o in outputs]
    record.masks = masks
    agree = float(np.mean([M.pixel_agreement(a, r.mask) for a, r in zip(masks, refs, strict=True)]))
    conf_ref = sum(M.confusion(a, r.mask, num_classes) for a, r in zip(masks, refs, strict=True))
    labelled = [r for r in refs if r.label is not None]
    miou_labels = None
    if labelled:
        conf_lab = sum(M.confusion(a, r.label, num_classes) for a, r in zip(masks, refs, strict=True)
                       if r.label is not None)
        miou_labels = M.miou(conf_lab)
    stacked_out = np.concatenate([o.ravel() for o in outputs])
    stacked_ref = np.concatenate([r.logits.ravel() for r in refs])
    record.metrics = {
        "pixel_agreement": agree,
        "miou_vs_reference": M.miou(conf_ref),
        "miou_vs_labels": miou_labels,
        "max_abs_error": M.max_abs_error(stacked_out, stacked_ref),
        "mean_abs_error": M.mean_abs_error(stacked_out, stacked_ref),
        "sqnr_db": M.sqnr_db(stacked_out, stacked_ref),
        "latency_ms": statistics.median(times),
    }


def run_parity(bundle: Path, args: argparse.Namespace, log=print) -> tuple[list[Record], dict]:
    import converters
    from converters.base import close_runner
    from espnet_mobile.zoo import get_entry

    manifest = B.load_manifest(bundle)  # schema and every artifact's sha256
    entry = get_entry(manifest["model_id"])
    _, _, height, width = manifest["input"]["shape"]
    runtimes = converters.runtimes()
    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    if only:  # a typo must not turn the check into one that checks nothing
        known = ({s.name for s in runtimes} | {rt for units in DEVICE_ONLY.values() for rt, _, _ in units}
                 | {a["file"] for a in manifest["artifacts"]})
        unknown = sorted(only - known)
        if unknown:
            raise UserError(f"--only: no runtime or artifact named {', '.join(unknown)}; "
                            f"choose from {', '.join(sorted(known))}")
    model = bundle_reference(bundle, manifest, entry, args.weights)
    source, samples = load_samples(args, entry, height, width)
    refs = reference_outputs(entry, model, samples, height, width)
    log(f"{len(refs)} samples from {source}; reference: {entry.model_id} PyTorch fp32")
    reference_miou = None
    if all(r.label is not None for r in refs):
        reference_miou = M.miou(sum(M.confusion(r.mask, r.label, entry.num_classes) for r in refs))
        log(f"reference mIoU vs labels: {reference_miou:.2f}")
    thresholds = manifest.get("thresholds") or B.thresholds()
    records: list[Record] = []
    for art in manifest["artifacts"]:
        path = bundle / art["file"]
        for spec in runtimes:
            if not spec.applies(art) or (only and spec.name not in only and art["file"] not in only):
                continue
            rec = Record(art["file"], art["target"], art["delegate"], art["precision"], spec.name,
                         spec.compute_unit, executed=False, label=spec.label,
                         judged_as=spec.judged_as(art["precision"]))
            ok, why = spec.status()
            if not ok:
                rec.reason = why
                records.append(rec)
                continue
            log(f"{art['file']} on {spec.name} ({spec.compute_unit}) ...")
            runner = None
            try:
                runner = spec.load(path, art)
                rec.executed = True
                execute(rec, runner, refs, entry.num_classes)
                judge(rec, refs, thresholds, reference_miou)
            except Exception as err:
                rec.executed = True
                rec.passed = False
                rec.failures = [f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err) else ''}"]
            finally:
                if runner is not None:
                    close_runner(runner)
            if rec.passed is False and getattr(args, "culprit", True):
                rec.culprit = find_culprit(rec, art, path, model, entry, refs, height, width)
            records.append(rec)
            _log_record(rec, log)
        for runtime, unit, why in DEVICE_ONLY.get((art["target"], art["delegate"]), []):
            if only and runtime not in only and art["file"] not in only:
                continue
            records.append(Record(art["file"], art["target"], art["delegate"], art["precision"], runtime, unit,
                                  executed=False, reason=why, label=runtime,
                                  device_steps=DEVICE_STEPS.get(art["target"])))
    summary = {"data": source, "samples": len(refs), "reference_miou_vs_labels": reference_miou,
               "executed": sum(r.executed for r in records), "passed": sum(bool(r.passed) for r in records),
               "failed": sum(r.passed is False for r in records),
               "not_executed": sum(not r.executed for r in records)}
    return records, {"summary": summary, "refs": refs, "manifest": manifest, "entry": entry}


def find_culprit(rec: Record, art: dict, path: Path, model, entry, refs, height: int, width: int) -> dict | None:
    """Name the first layer where the error jumps, where this runtime lets us look inside."""
    try:
        from espnet_mobile.parity.culprit import locate

        return locate(rec, art, path, model, entry, refs[0].input)
    except ImportError:
        return None
    except Exception as err:
        return {"method": "none", "error": f"{type(err).__name__}: {err}"[:300]}


def _log_record(rec: Record, log) -> None:
    if rec.metrics:
        m = rec.metrics
        log(f"  {'PASS' if rec.passed else 'FAIL'} agreement {m['pixel_agreement']:.4%}, "
            f"mIoU vs ref {m['miou_vs_reference']:.2f}, max err {m['max_abs_error']:.3g}, "
            f"SQNR {m['sqnr_db']:.1f} dB, {m['latency_ms']:.1f} ms")
    for f in rec.failures:
        log(f"  FAIL {f}")
    if rec.culprit and rec.culprit.get("layer"):
        log(f"  culprit: {rec.culprit['layer']} ({rec.culprit.get('method')})")


@dataclass
class ParityResult:
    """One parity check of a bundle: a record per (artifact, runtime, compute unit), the summary, the report."""

    records: list[Record]
    summary: dict
    report: Path

    @property
    def passed(self) -> bool:
        return self.summary["failed"] == 0


def check_parity(bundle: Path, *, images: Path | None = None, dataset: str | None = None,
                 synthetic: int | None = None, split: str = "val", limit: int | None = None,
                 only: str | None = None, weights: str | None = None, report: Path | None = None,
                 culprit: bool = True, log=print) -> ParityResult:
    """Run every artifact of ``bundle`` on every runtime here against the reference; write the reports.

    Photos default to the model's domain (see :mod:`espnet_mobile.data.domain_photos`). The result also
    goes into the bundle's manifest (``parity``) and ``<report>/report.html``. ``culprit=False`` skips the
    layer search on a miss (a zoo-wide sweep wants the figure, not minutes of debugging per model).
    """
    from espnet_mobile.parity.records import record_json
    from espnet_mobile.parity.report import write_reports

    bundle = Path(bundle)
    args = argparse.Namespace(images=images, dataset=dataset, synthetic=synthetic, split=split, limit=limit,
                              only=only, weights=weights, culprit=culprit)
    records, ctx = run_parity(bundle, args, log=log)
    report_dir = Path(report) if report else bundle / "parity"
    write_reports(report_dir, records, ctx)
    manifest = ctx["manifest"]
    manifest["parity"] = {"summary": ctx["summary"], "report": str(report_dir),
                          "records": [record_json(r) for r in records]}
    B.write_manifest(bundle, manifest)
    return ParityResult(records, ctx["summary"], report_dir)


def main(argv: list[str] | None = None) -> int:
    """The command, ``python -m espnet_mobile.parity`` (see ``__main__.py``)."""
    from espnet_mobile.parity.__main__ import main as command

    return command(argv)
