"""One exception type for mistakes a user can fix, reported as a one-line error."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix.

    Command-line entry points print it as ``error: <message>`` and exit with 2,
    never with a traceback.
    """


EXIT_USER_ERROR = 2


VERBOSE_ENV = "ESPNET_MOBILE_VERBOSE"


def quiet_third_party() -> None:
    """Keep the console to our own progress and results.

    A conversion otherwise prints thousands of lines: torch's pytree
    deprecation warning once per exported node, and INFO records of libraries
    that log through the root logger (LiteRT's JAX lowering, the Vulkan
    partitioner). Warnings and errors still show; ``ESPNET_MOBILE_VERBOSE=1``
    shows everything.
    """
    if os.environ.get(VERBOSE_ENV):
        return
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
    # A root handler at WARNING makes later logging.basicConfig(level=INFO) calls of libraries no-ops;
    # the handler's own level holds when a library sets the root logger to INFO (ExecuTorch's Vulkan
    # modules do at import).
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    for name in ("torchao", "coremltools"):  # import-time notices about libraries Linux does not have
        logging.getLogger(name).setLevel(logging.ERROR)


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body, turning a :class:`UserError` into exit code 2."""
    quiet_third_party()
    try:
        return body()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
