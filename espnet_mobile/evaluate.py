"""Accuracy against labels: the PyTorch reference and every artifact of a bundle, on a labelled dataset.

    python -m espnet_mobile.evaluate (MODEL_ID | BUNDLE) --dataset {camvid,cityscapes,voc}:DIR
        [--split val] [--limit N] [--json PATH] [--only NAMES] [--weights PATH]

Parity compares an artifact with our own reference; only labels can show that the
reference itself (its weights, its preprocessing) computes what the authors' model
computes. Each photo goes through the apps' preprocessing at the model's input size;
the argmax mask is resized to the label's size by nearest neighbour (the apps'
post-processing) and scored there. mIoU averages the IoU of the dataset's classes
(the checkpoints' void channel left out; classes absent from both labels and
predictions do not count), pixel accuracy is over labelled pixels.

On a bundle every artifact runs on every runtime that executes it here (the ones
parity uses), and the results go into the manifest's ``accuracy`` section, which
the apps show.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from espnet_mobile import metrics as M
from espnet_mobile.errors import UserError, run_cli
from espnet_mobile.files import write_text_atomic

REFERENCE = "pytorch-reference"
LABELLED_KINDS = ("camvid", "cityscapes", "voc")
# Keep preprocessed inputs in memory for the next runtime while they fit in this many bytes.
INPUT_CACHE_BYTES = 1 << 30


@dataclass
class EvalRecord:
    """One model (the reference or an artifact on one runtime) scored against the labels."""

    artifact: str
    target: str | None
    precision: str
    runtime: str
    compute_unit: str
    miou: float | None = None
    pixel_accuracy: float | None = None
    class_iou: dict[str, float | None] = field(default_factory=dict)
    agreement_with_reference: float | None = None
    sha256: str | None = None  # the artifact's, so a re-made artifact's old figures can be told apart
    images: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Evaluation:
    """Everything one evaluation measured; ``accuracy_section`` is what the manifest keeps."""

    model_id: str
    dataset: str
    dataset_title: str
    split: str
    images: int
    classes: list[str]
    records: list[EvalRecord]
    date: str
    tool_versions: dict[str, str]
    not_run: list[tuple[str, str, str]] = field(default_factory=list)  # (artifact, runtime, why)

    def accuracy_section(self) -> dict:
        return {
            "dataset": self.dataset, "dataset_title": self.dataset_title, "split": self.split,
            "images": self.images, "ignore_label": M.IGNORE, "classes": list(self.classes),
            "date": self.date, "tool_versions": dict(self.tool_versions),
            "results": [_record_json(r) for r in self.records],
        }

    def reference(self) -> EvalRecord:
        return next(r for r in self.records if r.artifact == REFERENCE)


def _record_json(r: EvalRecord) -> dict:
    out = asdict(r)
    for key in ("miou", "pixel_accuracy", "agreement_with_reference"):
        if out[key] is not None:
            out[key] = round(out[key], 4)
    out["class_iou"] = {k: (None if v is None else round(v, 4)) for k, v in r.class_iou.items()}
    out["seconds"] = round(r.seconds, 2)
    return out


class Scores:
    """Confusion against the labels, and agreement with the reference masks, for one model."""

    def __init__(self, num_classes: int, scored: list[int]) -> None:
        self.num_classes = num_classes
        self.scored = scored
        self.conf = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.agree = 0
        self.agree_total = 0

    def add(self, mask: np.ndarray, label: np.ndarray, reference_mask: np.ndarray | None = None) -> None:
        from espnet_mobile.preprocess import resize_mask_nearest

        full = resize_mask_nearest(mask, *label.shape)
        self.conf += M.confusion(full, label, self.num_classes)
        if reference_mask is not None:
            self.agree += int(np.count_nonzero(mask == reference_mask))
            self.agree_total += mask.size

    def fill(self, record: EvalRecord, classes: list[str]) -> None:
        ious = M.iou_per_class(self.conf)[self.scored]
        record.class_iou = {c: (None if np.isnan(v) else float(v * 100.0)) for c, v in zip(classes, ious, strict=True)}
        record.miou = float(np.nanmean(ious) * 100.0) if np.any(~np.isnan(ious)) else None
        labelled = int(self.conf.sum())
        record.pixel_accuracy = float(np.trace(self.conf) / labelled * 100.0) if labelled else None
        if self.agree_total:
            record.agreement_with_reference = self.agree / self.agree_total * 100.0


class Inputs:
    """The dataset's photos as model inputs with their labels, kept in memory while they fit."""

    def __init__(self, spec, split: str, limit: int | None, height: int, width: int) -> None:
        from espnet_mobile import data

        self.spec, self.split, self.limit = spec, split, limit
        self.height, self.width = height, width
        self.names = [name for name, _, _ in data.LAYOUTS[spec.kind](spec.path, split)][:limit]
        if not self.names:
            raise UserError(f"no {spec.kind} photos for split {split!r} under {spec.path}")
        per_image = 3 * height * width * 4
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = (
            [] if per_image * len(self.names) <= INPUT_CACHE_BYTES else None)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        from espnet_mobile import data
        from espnet_mobile.preprocess import preprocess

        if self._cache is not None and len(self._cache) == len(self.names):
            yield from self._cache
            return
        for sample in data.iter_samples(self.spec, split=self.split, limit=self.limit):
            item = (preprocess(sample.rgb, self.height, self.width), sample.label)
            if self._cache is not None:
                self._cache.append(item)
            yield item


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=None)


def _score(run: Callable[[np.ndarray], np.ndarray], inputs: Inputs, record: EvalRecord, classes: list[str],
           scored: list[int], num_classes: int, reference_masks: list[np.ndarray] | None,
           keep_masks: list[np.ndarray] | None = None) -> None:
    from espnet_mobile.preprocess import argmax_mask

    scores = Scores(num_classes, scored)
    start = time.perf_counter()
    with _progress(len(inputs), f"{record.artifact} on {record.runtime}") as bar:
        for i, (x, label) in enumerate(inputs):
            mask = argmax_mask(np.asarray(run(x)))
            if keep_masks is not None:
                keep_masks.append(mask)
            scores.add(mask, label, None if reference_masks is None else reference_masks[i])
            bar.update(1)
    record.seconds = time.perf_counter() - start
    record.images = len(inputs)
    scores.fill(record, classes)


def tool_versions() -> dict[str, str]:
    from espnet_mobile import __version__

    versions = {"espnet_mobile": __version__}
    for package in ("torch", "numpy", "executorch", "ai-edge-litert", "coremltools"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def parse_dataset(text: str, entry):
    """A labelled dataset spec whose classes are the model's; anything else is a user error."""
    from espnet_mobile import data

    spec = data.parse_spec(text)
    if spec.kind not in LABELLED_KINDS:
        raise UserError(f"--dataset needs labels: pass camvid:DIR, cityscapes:DIR or voc:DIR, got {text!r}")
    if spec.kind != entry.dataset:
        raise UserError(f"{entry.model_id} predicts the {entry.data.title} classes, which {spec.kind} labels do not "
                        f"use; evaluate it on {entry.dataset}:DIR")
    return spec


def evaluate(target: str | Path, dataset: str, *, split: str = "val", limit: int | None = None,
             weights: str | None = None, only: set[str] | None = None, write: bool = False,
             log=print) -> Evaluation:
    """Score the reference (a zoo id) or a bundle's reference and artifacts against the labels.

    With ``write``, a bundle's manifest gets the result as its ``accuracy`` section.
    """
    import espnet_mobile as em
    from espnet_mobile import bundle as B
    from espnet_mobile.deploy import reference_forward
    from espnet_mobile.zoo import ZOO, get_entry

    bundle_dir = Path(target)
    manifest = None
    if (bundle_dir / B.MANIFEST).is_file():
        manifest = B.load_manifest(bundle_dir)
        entry = get_entry(manifest["model_id"])
        _, _, height, width = manifest["input"]["shape"]
    elif str(target) in ZOO:
        entry = get_entry(str(target))
        height, width = entry.input_height, entry.input_width
    elif bundle_dir.is_dir():
        raise UserError(f"{bundle_dir} is a folder without a {B.MANIFEST}; pass a bundle made by "
                        "python -m espnet_mobile.convert, or a zoo id")
    else:
        get_entry(str(target))  # raises with the list of valid ids
        raise AssertionError("unreachable")
    spec = parse_dataset(dataset, entry)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")

    if manifest is not None:
        from espnet_mobile.parity import bundle_reference

        model = bundle_reference(bundle_dir, manifest, entry, weights)
    else:
        model = em.create_model(entry.model_id, weights=weights or em.PRETRAINED)
    inputs = Inputs(spec, split, limit, height, width)
    classes = list(entry.data.scored_classes)
    scored = [i for i in range(entry.num_classes) if i != entry.data.void_index]
    log(f"{entry.model_id} on {spec.kind} {split}: {len(inputs)} photos from {spec.path}, "
        f"{len(classes)} classes, input {height}x{width}")

    import torch

    def run_reference(x: np.ndarray) -> np.ndarray:
        return reference_forward(model, entry, torch.from_numpy(x)).numpy()

    records = [EvalRecord(REFERENCE, None, "fp32", "pytorch", "CPU")]
    reference_masks: list[np.ndarray] = []
    _score(run_reference, inputs, records[0], classes, scored, entry.num_classes, None, reference_masks)
    _log_row(records[0], log)

    not_run: list[tuple[str, str, str]] = []
    if manifest is not None:
        records += _evaluate_artifacts(bundle_dir, manifest, inputs, classes, scored, entry.num_classes,
                                       reference_masks, only, not_run, log)
    result = Evaluation(entry.model_id, spec.kind, entry.data.title, split, len(inputs), classes, records,
                        dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                        tool_versions(), not_run)
    if write and manifest is not None:
        write_accuracy(bundle_dir, result)
    return result


def _evaluate_artifacts(bundle: Path, manifest: dict, inputs: Inputs, classes: list[str], scored: list[int],
                        num_classes: int, reference_masks: list[np.ndarray], only: set[str] | None,
                        not_run: list[tuple[str, str, str]], log) -> list[EvalRecord]:
    import converters
    from converters.base import close_runner

    runtimes = converters.runtimes()
    if only:
        known = {s.name for s in runtimes} | {a["file"] for a in manifest["artifacts"]} | {REFERENCE}
        unknown = sorted(only - known)
        if unknown:
            raise UserError(f"--only: no runtime or artifact named {', '.join(unknown)}; "
                            f"choose from {', '.join(sorted(known))}")
    records = []
    for art in manifest["artifacts"]:
        specs = [s for s in runtimes if s.applies(art)]
        if not specs:
            not_run.append((art["file"], "-", art.get("not_executable_reason") or "no runtime here executes it"))
        for spec in specs:
            if only and spec.name not in only and art["file"] not in only:
                continue
            ok, why = spec.status()
            if not ok:
                not_run.append((art["file"], spec.name, why))
                continue
            record = EvalRecord(art["file"], art["target"], art["precision"], spec.name, spec.compute_unit,
                                sha256=art["sha256"])
            runner = None
            try:
                runner = spec.load(bundle / art["file"], art)
                _score(runner, inputs, record, classes, scored, num_classes, reference_masks)
            except Exception as err:  # a runtime failure is a result to report, not a crash of the command
                first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
                record.error = f"{type(err).__name__}: {first}"
            finally:
                if runner is not None:
                    close_runner(runner)
            records.append(record)
            _log_row(record, log)
    return records


def _log_row(r: EvalRecord, log) -> None:
    if r.error:
        log(f"  {r.artifact} on {r.runtime}: failed - {r.error}")
        return
    agree = f", agreement with reference {r.agreement_with_reference:.2f}%" if r.agreement_with_reference else ""
    log(f"  {r.artifact} on {r.runtime}: mIoU {r.miou:.2f}, pixel accuracy {r.pixel_accuracy:.2f}%{agree} "
        f"({r.images} photos, {r.seconds:.1f} s)")


def format_table(ev: Evaluation) -> str:
    """The console table: one row per model and runtime, then IoU per class for each row."""
    ref = ev.reference().miou
    header = (f"{'artifact':<48} {'precision':<9} {'runtime':<26} {'mIoU':>6} {'vs ref':>7} "
              f"{'pix acc':>7} {'agree':>7}")
    lines = [f"{ev.model_id} on {ev.dataset_title} {ev.split} ({ev.images} photos, {len(ev.classes)} classes)",
             header, "-" * len(header)]
    for r in ev.records:
        if r.error:
            lines.append(f"{r.artifact:<48} {r.precision:<9} {r.runtime:<26} failed: {r.error}")
            continue
        delta = "" if r.artifact == REFERENCE or ref is None else f"{r.miou - ref:+.2f}"
        agree = "" if r.agreement_with_reference is None else f"{r.agreement_with_reference:.2f}%"
        lines.append(f"{r.artifact:<48} {r.precision:<9} {r.runtime:<26} {r.miou:6.2f} {delta:>7} "
                     f"{r.pixel_accuracy:6.2f}% {agree:>7}")
    short = [c[:8] for c in ev.classes]
    lines += ["", "IoU per class (%):", f"{'':<36} " + " ".join(f"{c:>8}" for c in short)]
    for r in ev.records:
        if r.error:
            continue
        name = r.artifact if r.artifact == REFERENCE else f"{r.precision} {r.runtime}"
        cells = " ".join(f"{'-':>8}" if v is None else f"{v:8.2f}" for v in r.class_iou.values())
        lines.append(f"{name[:36]:<36} {cells}")
    for artifact, runtime, why in ev.not_run:
        lines.append(f"not run here: {artifact} ({runtime}): {why}")
    return "\n".join(lines)


def write_accuracy(bundle: Path, ev: Evaluation) -> None:
    """Put the measured accuracy into the bundle's manifest (atomic, schema-checked)."""
    from espnet_mobile import bundle as B

    manifest = B.load_manifest(bundle, verify_files=False)
    manifest["accuracy"] = ev.accuracy_section()
    B.write_manifest(bundle, manifest)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.evaluate",
                                     description="Score the reference and a bundle's artifacts against labels.")
    parser.add_argument("target", help="a zoo id (scores the PyTorch reference) or a bundle folder")
    parser.add_argument("--dataset", required=True, metavar="KIND:DIR",
                        help="camvid:DIR, cityscapes:DIR or voc:DIR, with labels")
    parser.add_argument("--split", default="val", help="dataset split (default val)")
    parser.add_argument("--limit", type=int, default=None, help="score at most N photos")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--only", default=None, help="comma-separated runtime names or artifact files")
    parser.add_argument("--weights", default=None, help="reference checkpoint (default: the published one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from espnet_mobile import bundle as B

        only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
        ev = evaluate(args.target, args.dataset, split=args.split, limit=args.limit, weights=args.weights,
                      only=only)
        print()
        print(format_table(ev))
        section = ev.accuracy_section()
        if args.json is not None:
            write_text_atomic(args.json, json.dumps(section, indent=2) + "\n")
            print(f"results: {args.json}")
        if (Path(args.target) / B.MANIFEST).is_file():
            write_accuracy(Path(args.target), ev)
            print(f"accuracy written into {Path(args.target) / B.MANIFEST}")
        return 1 if any(r.error for r in ev.records) else 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
