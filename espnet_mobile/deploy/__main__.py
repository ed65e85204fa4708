"""python -m espnet_mobile.deploy: the deployable graph against the reference, and its exported op counts."""

from __future__ import annotations

import argparse
import sys

import torch

from espnet_mobile.deploy import export, exported_op_counts, format_op_counts, make_deployable, reference_forward
from espnet_mobile.zoo import get_entry


def main(argv: list[str] | None = None) -> int:
    from espnet_mobile import PRETRAINED, create_model
    from espnet_mobile.errors import run_cli
    from espnet_mobile.zoo import DEFAULT_MODEL_ID

    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.deploy",
                                     description="Build the deployable graph, check it, print its ops.")
    parser.add_argument("--model", default=DEFAULT_MODEL_ID)
    parser.add_argument("--weights", default=PRETRAINED,
                        help="checkpoint path, or 'pretrained' (default) to resolve the published one")
    args = parser.parse_args(argv)

    def body() -> int:
        entry = get_entry(args.model)
        model = create_model(args.model, weights=args.weights)
        deployable = make_deployable(model, entry)
        x = deployable.example_input()
        ref = reference_forward(model, entry, x)
        with torch.no_grad():
            out = deployable(x)
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        counts = exported_op_counts(export(deployable, x))
        print(f"{entry.model_id}: input {tuple(x.shape)}, deployable vs reference max|diff|/max|logit| "
              f"= {rel:.2e}")
        print(format_op_counts(counts))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
