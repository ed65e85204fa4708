"""Check a bundle and pack it into the one file an app embeds.

    python -m espnet_mobile.package artifacts/<model_id> --zip [--out FILE] [--targets tflite,executorch]

The manifest is validated and every listed file's sha256 verified before
anything is written; the zip is written to a temporary name and renamed.
Unzip it into the Android app's ``app/src/main/assets/bundle/`` or add the
folder to the iOS app as a resource.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

from espnet_mobile import bundle as B
from espnet_mobile.errors import UserError, run_cli
from espnet_mobile.files import atomic_path


def bundle_files(bundle: Path, manifest: dict, targets: set[str] | None = None) -> tuple[dict, list[Path]]:
    """The (possibly filtered) manifest and every file it refers to, relative to ``bundle``."""
    arts = [a for a in manifest["artifacts"] if targets is None or a["target"] in targets]
    if targets is not None and not arts:
        raise UserError(f"no artifacts for targets {', '.join(sorted(targets))} in {bundle}")
    kept = dict(manifest, artifacts=arts)
    files: list[Path] = []
    for art in arts:
        path = B.verify_artifact(bundle, art)
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if "bundled_program" in art:
            files.append(bundle / art["bundled_program"]["file"])
    for item in manifest["golden"]["items"]:
        for key in ("image", "input", "logits", "mask", "full_mask"):
            if key in item:
                files.append(bundle / item[key]["file"])
    missing = [str(f.relative_to(bundle)) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{bundle} is missing {', '.join(missing[:5])}; "
                        "rebuild it with python -m espnet_mobile.convert")
    return kept, files


def write_zip(bundle: Path, out: Path, targets: set[str] | None = None) -> Path:
    import json

    manifest = B.load_manifest(bundle)
    kept, files = bundle_files(bundle, manifest, targets)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(B.MANIFEST, json.dumps(kept, indent=2) + "\n")
            for f in files:
                zf.write(f, str(f.relative_to(bundle)))
        os.chmod(tmp, 0o644)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.package",
                                     description="Verify a bundle and pack it for an app.")
    parser.add_argument("bundle", type=Path, help="bundle folder (<out>/<model_id>)")
    parser.add_argument("--zip", action="store_true", help="write <bundle>.zip (default: verify only)")
    parser.add_argument("--out", type=Path, default=None, help="zip path (default: next to the bundle)")
    parser.add_argument("--targets", default=None, help="comma-separated targets to keep (default: all)")
    args = parser.parse_args(argv)

    def body() -> int:
        targets = set(args.targets.split(",")) if args.targets else None
        manifest = B.load_manifest(args.bundle)
        _, files = bundle_files(args.bundle, manifest, targets)
        print(f"{args.bundle}: manifest valid, {len(manifest['artifacts'])} artifacts and "
              f"{len(manifest['golden']['items'])} golden items verified")
        if args.zip:
            out = args.out or args.bundle.parent / f"{args.bundle.name}.zip"
            write_zip(args.bundle, out, targets)
            print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(files) + 1} files)")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
