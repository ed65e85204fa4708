"""python -m espnet_mobile.parity: check every artifact of a bundle on every runtime here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from espnet_mobile.errors import run_cli
from espnet_mobile.parity import check_parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.parity",
                                     description="Check every artifact of a bundle on every runtime here.")
    parser.add_argument("bundle", type=Path)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, help="folder of unlabelled photos")
    source.add_argument("--dataset", help="cityscapes:DIR, voc:DIR or camvid:DIR (labelled)")
    source.add_argument("--synthetic", type=int, default=None,
                        help="N synthetic labelled scenes (the default when no photos of the model's domain "
                             "are found in $ESPNET_MOBILE_IMAGES / $ESPNET_MOBILE_DATASETS: 8)")
    parser.add_argument("--split", default="val", help="dataset split (default val)")
    parser.add_argument("--limit", type=int, default=None, help="use at most N samples")
    parser.add_argument("--report", type=Path, default=None, help="report folder (default <bundle>/parity)")
    parser.add_argument("--only", default=None, help="comma-separated runtime names or artifact files")
    parser.add_argument("--weights", default=None, help="reference checkpoint (default: the published one)")
    args = parser.parse_args(argv)

    def body() -> int:
        result = check_parity(args.bundle, images=args.images, dataset=args.dataset, synthetic=args.synthetic,
                              split=args.split, limit=args.limit, only=args.only, weights=args.weights,
                              report=args.report)
        s = result.summary
        print(f"\n{s['executed']} checks executed: {s['passed']} passed, {s['failed']} failed; "
              f"{s['not_executed']} not executable here. Report: {result.report / 'report.html'}")
        return 0 if result.passed else 1

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
