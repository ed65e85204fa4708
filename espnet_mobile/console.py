"""A quiet console: this project's steps and results; the libraries' chatter only with ESPNET_MOBILE_VERBOSE=1.

Conversions and runtimes print from native code (ExecuTorch's ``cpuinfo_utils.cpp``,
TensorFlow's oneDNN notices) and redraw progress bars (coremltools, once per pass), none of
which Python's logging or warnings can silence. :func:`native_output_captured` points the
process's own stdout and stderr file descriptors at a temporary file around such a step and,
if the step fails, shows the end of what it printed; Python warnings raised inside are
collected and the ones that matter are shown once, after the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import tempfile
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "ESPNET_MOBILE_VERBOSE"
#: Warning categories that say nothing to a user of the command (library internals).
QUIET_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning, ResourceWarning)
FAILURE_TAIL_LINES = 25


def verbose() -> bool:
    return bool(os.environ.get(VERBOSE_ENV))


def quiet_third_party() -> None:
    """Keep the console to our own progress and results.

    A conversion otherwise prints thousands of lines: torch's pytree
    deprecation warning once per exported node, and INFO records of libraries
    that log through the root logger (LiteRT's JAX lowering, the Vulkan
    partitioner). Warnings and errors still show; ``ESPNET_MOBILE_VERBOSE=1``
    shows everything.
    """
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING lines
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
    # A root handler at WARNING makes later logging.basicConfig(level=INFO) calls of libraries no-ops;
    # the handler's own level holds when a library sets the root logger to INFO (ExecuTorch's Vulkan
    # modules do at import).
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    for name in ("torchao", "coremltools"):  # import-time notices about libraries Linux does not have
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def native_output_captured(step: str = "") -> Iterator[None]:
    """Send file descriptors 1 and 2 to a temporary file for the duration (unless verbose).

    On an exception the last lines go to stderr, labelled with ``step``; warnings of categories
    that matter to a user are shown once each afterwards.
    """
    if verbose():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                sink.seek(0)
                tail = sink.read().decode(errors="replace").splitlines()[-FAILURE_TAIL_LINES:]
                if tail:
                    label = f" ({step})" if step else ""
                    print(f"last lines the libraries printed{label}:", *("  " + line for line in tail),
                          sep="\n", file=sys.stderr)
            seen = set()
            for w in caught:
                if issubclass(w.category, QUIET_CATEGORIES) or str(w.message) in seen:
                    continue
                seen.add(str(w.message))
                print(f"warning: {w.category.__name__}: {str(w.message).splitlines()[0][:300]}", file=sys.stderr)


def peak_memory_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child process, in MB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children
