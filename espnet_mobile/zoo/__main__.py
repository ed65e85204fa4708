"""python -m espnet_mobile.zoo: the zoo table, its JSON, a model's profile, a dataset's statistics."""

from __future__ import annotations

import argparse
import json
import sys

from espnet_mobile.errors import UserError
from espnet_mobile.zoo import DEFAULT_MODEL_ID, ZOO, get_entry


def format_table() -> str:
    header = f"{'model id':<34} {'arch':<9} {'dataset':<11} {'input HxW':<10} {'classes':>7} {'paper mIoU':>10}"
    rows = [header, "-" * len(header)]
    for e in ZOO.values():
        miou = f"{e.paper.miou:.2f}" if e.paper.miou is not None else "-"
        default = "  (default)" if e.model_id == DEFAULT_MODEL_ID else ""
        rows.append(f"{e.model_id:<34} {e.arch:<9} {e.dataset:<11} "
                    f"{e.input_height}x{e.input_width:<6} {e.num_classes:>7} {miou:>10}{default}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.zoo",
                                     description="List the model zoo.")
    parser.add_argument("--json", action="store_true", help="print the zoo as JSON")
    parser.add_argument("--profile", metavar="ID",
                        help="count parameters and FLOPs of one model at its zoo input size")
    parser.add_argument("--dataset-stats", metavar="KIND:DIR",
                        help="compute a dataset's input mean/std the way ESPNet's authors did (training split, "
                             "BGR 0-255), e.g. camvid:DIR")
    args = parser.parse_args(argv)
    try:
        if args.dataset_stats:
            from espnet_mobile.zoo.dataset_stats import dataset_stats

            def progress(done: int, total: int) -> None:
                if done == total or done % 50 == 0:
                    print(f"  {done}/{total} photos", file=sys.stderr)

            stats = dataset_stats(args.dataset_stats, progress)
            print(stats.describe())
            print(f"mean={list(stats.mean)}")
            print(f"std={list(stats.std)}")
        elif args.profile:
            from espnet_mobile.zoo.flops import format_profile, profile_model

            print(format_profile(profile_model(get_entry(args.profile))))
        elif args.json:
            json.dump({k: e.to_json() for k, e in ZOO.items()}, sys.stdout, indent=2)
            print()
        else:
            print(format_table())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
