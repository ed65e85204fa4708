"""python -m espnet_mobile.qat: quantization-aware fine-tuning (see espnet_mobile/qat/__init__.py)."""

from __future__ import annotations

import json
import sys

import torch

from espnet_mobile.errors import run_cli
from espnet_mobile.qat.config import METRICS_NAME, build_parser, config_from_args, default_out
from espnet_mobile.qat.distributed import init_distributed
from espnet_mobile.qat.run import Run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg, given = config_from_args(args)
        torch.set_num_threads(args.threads)
        dist = init_distributed()
        try:
            run = Run(cfg, args.out or default_out(cfg), dist, checkpoint_every=args.checkpoint_every,
                      artifact_eval=args.artifact_eval, progress=not args.no_progress, resume=args.resume,
                      given=given)
            metrics = run.execute()
            if dist.main:
                print(json.dumps({k: metrics[k] for k in ("fp32_miou", "ptq_int8_miou", "qat_int8_miou",
                                                          "gap_closed", "ptq_int8_pixel_acc", "qat_int8_pixel_acc",
                                                          "gap_closed_pixel_acc", "gap_closed_miou_all",
                                                          "wall_seconds")}))
                print(f"metrics: {run.out / METRICS_NAME}\nconvert: {metrics['convert_command']}")
        finally:
            if dist.enabled and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
