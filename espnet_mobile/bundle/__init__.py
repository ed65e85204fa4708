"""The bundle an app embeds: ``<out>/<model_id>/manifest.json``, artifacts and golden vectors.

The manifest is validated against ``schemas/manifest.schema.json`` every time
it is written or read. Writes go through a temporary file and a rename, so a
killed process leaves the previous manifest whole.

Golden vectors (``golden/``): per item the source image (PNG), the exact
float32 input the artifacts take, the reference logits (float16) and the
argmax mask (uint8), all little-endian raw tensors, plus the mask at the
image's own size (palette PNG). The apps' accuracy check and the Kotlin and
Swift ports of the pre/post-processing are tested against these files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from espnet_mobile import __version__
from espnet_mobile.errors import UserError
from espnet_mobile.files import sha256_bytes, sha256_path, write_bytes_atomic, write_json_atomic
from espnet_mobile.zoo import ZooEntry

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GOLDEN_DIR = "golden"
GOLDEN_COUNT = 4


@cache
def schema() -> dict:
    return json.loads(resources.files("espnet_mobile.bundle").joinpath("schemas/manifest.schema.json").read_text())


@cache
def thresholds() -> dict:
    data = json.loads(resources.files("espnet_mobile.parity").joinpath("thresholds.json").read_text())
    return {k: v for k, v in data.items() if k != "description"}


def artifact_label(target: str, delegate: str) -> str:
    """``executorch``, ``executorch-coreml``, ``tflite``, ``tflite-gpu``, ...: the plain delegate is not named."""
    import converters

    return target if delegate == converters.backend(target).default_delegate else f"{target}-{delegate}"


def artifact_name(model_id: str, target: str, precision: str, delegate: str | None = None) -> str:
    """``<model_id>_<target>_<precision>.<ext>``; a delegate other than the backend's plain one is added."""
    import converters

    backend = converters.backend(target)
    label = artifact_label(target, delegate or backend.default_delegate)
    return f"{model_id}_{label}_{precision}.{backend.extension}"


def size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def validate(manifest: dict, where: str) -> None:
    import jsonschema

    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise UserError(f"{where} was written by a newer espnet-mobile (manifest schema {version}; this one reads "
                        f"up to {SCHEMA_VERSION}); upgrade espnet-mobile (pip install -U espnet-mobile)")

    try:
        jsonschema.validate(manifest, schema())
    except jsonschema.ValidationError as err:
        path = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise UserError(f"{where} does not follow the manifest schema at {path}: {err.message}; "
                        "rebuild the bundle with python -m espnet_mobile.convert") from None


def write_manifest(bundle: Path, manifest: dict) -> None:
    validate(manifest, f"manifest for {bundle}")
    write_json_atomic(bundle / MANIFEST, manifest)


def load_manifest(bundle: Path, *, verify_files: bool = True) -> dict:
    """Read and validate a bundle's manifest; with ``verify_files``, check every artifact's sha256."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise UserError(f"{bundle} is not a bundle: no {MANIFEST}; make one with python -m espnet_mobile.convert")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); rebuild the bundle") from None
    validate(manifest, str(path))
    if verify_files:
        for art in manifest["artifacts"]:
            verify_artifact(bundle, art)
    return manifest


def verify_artifact(bundle: Path, art: dict) -> Path:
    path = bundle / art["file"]
    if not path.exists():
        raise UserError(f"artifact {art['file']} listed in the manifest is missing from {bundle}; "
                        "re-run python -m espnet_mobile.convert")
    actual = sha256_path(path)
    if actual != art["sha256"]:
        raise UserError(f"artifact {art['file']} was altered (sha256 {actual[:12]}..., manifest says "
                        f"{art['sha256'][:12]}...); re-run python -m espnet_mobile.convert --force")
    return path


def new_manifest(entry: ZooEntry, checkpoint_sha256: str, *, height: int, width: int,
                 qat_sha256: str | None = None) -> dict:
    from espnet_mobile.preprocess import POSTPROCESSING_SPEC, PREPROCESSING_SPEC

    norm = entry.normalization
    return {
        "schema_version": SCHEMA_VERSION,
        "model_id": entry.model_id,
        "created_by": f"espnet-mobile {__version__}",
        "model": {
            "arch": entry.arch, "hparams": dict(entry.hparams), "dataset": entry.dataset,
            "checkpoint": entry.checkpoint, "checkpoint_sha256": checkpoint_sha256,
            "qat_checkpoint_sha256": qat_sha256, "num_classes": entry.num_classes,
            "paper": {"params_m": entry.paper.params_m, "mflops": entry.paper.mflops,
                      "miou": entry.paper.miou, "miou_split": entry.paper.miou_split},
        },
        "input": {
            "name": "image", "shape": [1, 3, height, width], "layout": "NCHW", "dtype": "float32",
            "color_order": "RGB", "value_range": [0.0, 1.0], "normalization": "baked_in",
            "authors_normalization": {"color_order": norm.color_order, "pixel_range": norm.pixel_range,
                                      "mean": list(norm.mean), "std": list(norm.std),
                                      "divide_after": norm.divide_after},
        },
        "output": {
            "name": "logits",
            "shape": [1, entry.num_classes, height // entry.output_stride, width // entry.output_stride],
            "layout": "NCHW", "dtype": "float32",
            "meaning": "per-class scores; the argmax over axis 1 is the class index into labels and palette",
        },
        "labels": list(entry.data.classes),
        "palette": [list(c) for c in entry.data.palette],
        "preprocessing": dict(PREPROCESSING_SPEC),
        "postprocessing": dict(POSTPROCESSING_SPEC),
        "artifacts": [],
        "golden": {"source": "none", "items": []},
        "thresholds": thresholds(),
        "parity": None,
        "accuracy": None,
    }


@dataclass
class GoldenItem:
    name: str
    rgb: np.ndarray  # source image, uint8 (h, w, 3)
    input: np.ndarray  # (1, 3, H, W) float32
    logits: np.ndarray  # (1, C, H', W') float32 reference


def golden_images(entry: ZooEntry, images: list[Path] | None) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """Four source images: real photos when given (downscaled to at most 640 px), else synthetic scenes."""
    from espnet_mobile.data import synthetic
    from espnet_mobile.data.images import load_rgb

    if images:
        chosen = []
        for path in images[:GOLDEN_COUNT]:
            rgb = load_rgb(path)
            scale = 640 / max(rgb.shape[:2])
            if scale < 1:
                rgb = np.asarray(Image.fromarray(rgb).resize(
                    (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))), Image.BILINEAR))
            chosen.append((path.stem, rgb))
        return "photos", chosen
    made = synthetic.scenes(GOLDEN_COUNT, entry.input_height + 37, entry.input_width + 53, entry.num_classes)
    return "synthetic", [(f"synthetic_{i}", rgb) for i, (rgb, _) in enumerate(made)]


def make_golden(entry: ZooEntry, model: torch.nn.Module, images: list[Path] | None) -> tuple[str, list[GoldenItem]]:
    from espnet_mobile.deploy import reference_forward
    from espnet_mobile.preprocess import preprocess

    source, sources = golden_images(entry, images)
    items = []
    for name, rgb in sources:
        x = preprocess(rgb, entry.input_height, entry.input_width)
        logits = reference_forward(model, entry, torch.from_numpy(x)).numpy()
        items.append(GoldenItem(name, rgb, x, logits))
    return source, items


def _write_tensor(bundle: Path, rel: str, array: np.ndarray) -> dict:
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    write_bytes_atomic(bundle / rel, data)
    return {"file": rel, "sha256": sha256_bytes(data), "shape": list(array.shape),
            "dtype": str(array.dtype), "byte_order": "little"}


def write_golden(bundle: Path, entry: ZooEntry, source: str, items: list[GoldenItem]) -> dict:
    """Write golden files into ``bundle/golden`` and return the manifest's ``golden`` block."""
    from espnet_mobile.data.images import palette_image, save_png_atomic
    from espnet_mobile.preprocess import argmax_mask, resize_mask_nearest

    out = []
    for item in items:
        base = f"{GOLDEN_DIR}/{item.name}"
        image_path = bundle / f"{base}.png"
        save_png_atomic(Image.fromarray(item.rgb), image_path)
        logits16 = item.logits.astype(np.float16)
        mask = argmax_mask(logits16)  # from the stored fp16 logits, so ports can reproduce it exactly
        full = resize_mask_nearest(mask, *item.rgb.shape[:2])
        save_png_atomic(palette_image(full, entry.data.palette), bundle / f"{base}_mask.png")
        out.append({
            "name": item.name,
            "image": {"file": f"{base}.png", "sha256": sha256_path(image_path)},
            "image_size": [int(item.rgb.shape[0]), int(item.rgb.shape[1])],
            "input": _write_tensor(bundle, f"{base}_input.f32", item.input.astype(np.float32)),
            "logits": _write_tensor(bundle, f"{base}_logits.f16", logits16),
            "mask": _write_tensor(bundle, f"{base}_mask.u8", mask[None].astype(np.uint8)),
            "full_mask": {"file": f"{base}_mask.png", "sha256": sha256_path(bundle / f"{base}_mask.png")},
        })
    return {"source": source, "items": out}


def read_tensor(bundle: Path, spec: dict) -> np.ndarray:
    """Read a golden tensor back, checking its sha256."""
    path = Path(bundle) / spec["file"]
    data = path.read_bytes()
    if sha256_bytes(data) != spec["sha256"]:
        raise UserError(f"golden file {spec['file']} was altered; rebuild the bundle")
    return np.frombuffer(data, dtype=np.dtype(spec["dtype"]).newbyteorder("<")).reshape(spec["shape"])


def drop_stale_accuracy(manifest: dict) -> None:
    """Accuracy results of artifacts that were re-made (another sha256) no longer describe the bundle."""
    section = manifest.get("accuracy")
    if not section:
        return
    current = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
    section["results"] = [r for r in section["results"]
                          if r.get("target") is None or current.get(r["artifact"]) == r.get("sha256")]


def upsert_artifact(manifest: dict, record: dict) -> None:
    """Replace the record for the same file, or append it."""
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["file"] != record["file"]] + [record]
    manifest["artifacts"].sort(key=lambda a: a["file"])
