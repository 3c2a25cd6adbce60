"""How every command of jobs/ and cluster/ ends: its exit code, and on failure one clear line on stderr.

A failure prints `error: <what went wrong>` and exits non-zero, never with a traceback: Ray's wrappers (a remote
task's RayTaskError, Ray Train's worker-group and controller errors) are unwrapped to the error that started it, a
multi-line message is folded into one line, anything that looks like a credential is masked. A failure that is not
one of the expected kinds (a bug, most likely) also names its type. TESSERA_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from schemas.config import ConfigError, redact_text

DEBUG_ENV = "TESSERA_DEBUG"
EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_INTERRUPTED = 1, 2, 130
MAX_MESSAGE_CHARS = 1000
# Where our own errors and Ray's are defined; with OSError, ValueError and RuntimeError these are the failures a
# command expects (bad input, a refused output, a cluster out of reach), reported by their message alone.
OWN_MODULES = ("schemas.", "pipeline.", "cluster.", "jobs.", "ray.")


def run_command(main: Callable[[], int | None]) -> NoReturn:
    """Run a command's main and exit with its code; a failure ends as one line on stderr (see the module doc)."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 (every failure becomes one line; TESSERA_DEBUG=1 re-raises)
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"error: {describe_failure(exc)}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILED)
    sys.exit(code or 0)


def describe_failure(exc: BaseException) -> str:
    """One line saying what failed: the root error's message, its type too when it is not an expected kind."""
    where, root = root_cause(exc)
    lines = []
    for line in str(root).splitlines():
        if line.lstrip().startswith("Traceback"):  # Ray puts the remote traceback in the message
            break
        if line.strip():
            lines.append(line.strip())
    message = " ".join(f"{line};" if i < len(lines) - 1 and not line.endswith(":") else line
                       for i, line in enumerate(lines))
    if isinstance(root, KeyError) and len(root.args) == 1:
        message = str(root.args[0])  # KeyError's str() quotes its message
    if not _expected(root):
        message = f"{type(root).__name__}: {message} (unexpected; {DEBUG_ENV}=1 shows the traceback)"
    message = redact_text(where + (message or type(root).__name__))
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."


def root_cause(exc: BaseException) -> tuple[str, BaseException]:
    """(where, the error that started it all) through Ray's wrappers; `where` names a training worker."""
    where = ""
    for _ in range(10):  # wrappers nest a few deep at most; a cycle must not hang the exit
        failures = getattr(exc, "worker_failures", None)  # ray.train.WorkerGroupError
        if isinstance(failures, dict) and failures:
            rank = min(failures)
            where, exc = f"training worker {rank}: ", failures[rank]
            continue
        inner = getattr(exc, "controller_failure", None) or getattr(exc, "cause", None)  # ControllerError, RayTaskError
        if not isinstance(inner, BaseException) or inner is exc:
            break
        if type(inner).__name__ == "UserCodeException" and inner.__cause__ is None:
            # Ray Data wraps a map task's error as "UDF failed to process a data block." and the original does not
            # survive the trip back; only the task's remote traceback names it (e.g. a full disk's OSError).
            head = str(exc).split("The above exception was the direct cause", 1)[0].splitlines()
            original = [line.strip() for line in head if re.match(r"[A-Za-z_][\w.]*(Error|Exception)\b[^ ]*: ", line)]
            if original:
                return where, RuntimeError(original[-1])
        exc = inner
    return where, exc


def _expected(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(OWN_MODULES) or isinstance(exc, (OSError, ValueError, RuntimeError))
