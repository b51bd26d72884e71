"""How a CLI run can fail, and the exit code each failure maps to.

Kept apart from the commands because every layer raises these (a bad manifest,
a locked output, a refused API key) and only `main` turns them into exit codes;
the exit-code table of `--help` sits next to the codes so the two change together.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1  # some images failed (error rows / failed list)
EXIT_USAGE = 2  # bad arguments, no such folder or manifest, no images found, a bad --tasks file
EXIT_SERVER = 3  # server unreachable, API key missing or rejected
EXIT_REFUSED = 4  # the API refused the whole request (cluster: too many images, invalid parameters; an invalid task list)
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    every image was processed without error (or there was nothing left to do)
  1    some images failed: each has a row with its error (score) or is listed under "failed" (cluster)
  2    usage error: bad option, no such folder or manifest, no images found, a --tasks file that cannot be
       read or is not a JSON array, or another run is writing the same outputs
  3    the server is unreachable, or the API key is missing or rejected (nothing more was processed)
  4    the API refused the whole request (cluster: e.g. more images than MAX_CLUSTER_IMAGES; score --tasks:
       an invalid task list, with the server's reason)
  130  interrupted (Ctrl-C); `score` resumes where it stopped when run again
"""


class UsageError(Exception):
    """Bad input: exit code 2."""


class ServerError(Exception):
    """Server unreachable or authentication failed: exit code 3."""


class RefusedError(Exception):
    """The API refused the whole request: exit code 4."""


def run_to_exit_code(name: str, run: Callable[[], int], interrupted: str = "") -> int:
    """`run()`'s exit code, or the code of the failure it raised, with the reason on stderr as `NAME: error: …`
    (one mapping for every command)."""
    try:
        return run()
    except UsageError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except RefusedError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
