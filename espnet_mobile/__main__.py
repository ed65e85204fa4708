"""``espnet-mobile <command> [options]``: one entry point for every command (``python -m espnet_mobile.<command>``)."""

from __future__ import annotations

import importlib
import sys

#: command -> (module whose main(argv) runs it, one line of help)
COMMANDS = {
    "zoo": ("espnet_mobile.zoo", "list the models; parameters and FLOPs; a dataset's input statistics"),
    "predict": ("espnet_mobile.predict", "segment photos with the reference model"),
    "deploy": ("espnet_mobile.deploy", "check the deployable graph against the reference"),
    "convert": ("espnet_mobile.convert", "convert a model to ExecuTorch, Core ML and LiteRT artifacts in a bundle"),
    "evaluate": ("espnet_mobile.evaluate", "score the reference and a bundle's artifacts against labels"),
    "parity": ("espnet_mobile.parity", "run every artifact on every runtime here against the reference"),
    "bench": ("espnet_mobile.bench", "latency and size of a bundle's artifacts against PyTorch eager"),
    "package": ("espnet_mobile.package", "verify a bundle and write the zip an app embeds"),
    "qat": ("espnet_mobile.qat", "quantization-aware fine-tuning for one backend"),
    "sensitivity": ("espnet_mobile.sensitivity", "rank layers by the accuracy int8 loses in each"),
    "noise-floor": ("espnet_mobile.noise_floor", "how often the fp32 argmax itself flips under one-level input "
                                                 "noise: a yardstick for int8 agreement"),
    "sweep": ("espnet_mobile.zoo.sweep", "convert every zoo model to int8, measure each, write docs/zoo.md"),
}


def usage() -> str:
    from espnet_mobile import __version__

    width = max(map(len, COMMANDS))
    lines = [f"espnet-mobile {__version__}: ESPNet and ESPNetv2 segmentation from the authors' checkpoints to phones",
             "", "usage: espnet-mobile <command> [options]   (espnet-mobile <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from espnet_mobile import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"espnet-mobile {name}"
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
