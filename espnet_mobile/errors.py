"""One exception type for mistakes a user can fix, reported as a one-line error."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix.

    Command-line entry points print it as ``error: <message>`` and exit with 2,
    never with a traceback.
    """


EXIT_USER_ERROR = 2


def run_cli(body: Callable[[], int]) -> int:
    """Run a command body, turning a :class:`UserError` into exit code 2."""
    from espnet_mobile.console import quiet_third_party

    quiet_third_party()
    try:
        return body()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
