"""The command-line face of the bundle: option values read the same way everywhere, and failures in one line.

Every bundle config's ``initialize`` step calls :func:`one_line_errors`, so any failure of
``python -m monai.bundle run <command> ...`` (a malformed option found while the config builds a component, a missing
file found halfway through) ends with one line on stderr, ``medsyn <command> failed: <Type>: <message>``, and a
non-zero exit, instead of MONAI's wrapped traceback. ``MEDSYN_TRACEBACK=1`` keeps the full traceback (for a bug
report). The ``python -m scripts....`` commands use :func:`exit_in_one_line` the same way.

The ``parse_*`` functions read option values as the command line gives them (Fire passes ``--overwrite maybe`` as
the string "maybe" and ``--guidance_scale nan`` as a float NaN) and name the option in their errors.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TRACEBACK_ENV = "MEDSYN_TRACEBACK"

# messages of the exceptions MONAI raises around the real one: the cause underneath names the problem and the fix
_MONAI_WRAPPERS = ("applying transform", "Failed to instantiate component", "Failed to evaluate")
_MAX_MESSAGE = 600


def root_cause(err: BaseException) -> BaseException:
    """The exception MONAI's wrappers (a transform being applied, a config component built or evaluated) hide."""
    while err.__cause__ is not None and str(err).startswith(_MONAI_WRAPPERS):
        err = err.__cause__
    return err


def one_line_message(command: str, err: BaseException) -> str:
    """``medsyn <command> failed: <Type>: <message>`` on one line (a long or multi-line message is folded)."""
    err = root_cause(err)
    if isinstance(err, KeyboardInterrupt):
        return f"medsyn {command} interrupted; rerun the same command to go on"
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return f"medsyn {command} failed: {type(err).__name__}: {text}"


@contextmanager
def exit_in_one_line(command: str) -> Iterator[None]:
    """For the command line: any failure inside ends the process with :func:`one_line_message` (exit status 1)."""
    try:
        yield
    except Exception as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        raise SystemExit(one_line_message(command, err)) from None


def _bundle_command(argv: Sequence[str]) -> str | None:
    """The run id of ``python -m monai.bundle run <id> ...`` (or ``--run_id <id>``), for the message; None when this
    process is not the bundle command line (a program that runs a config in its own process keeps its own hook)."""
    args = list(argv)
    if not args or Path(args[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return None
    for flag in ("--run_id", "run"):
        if flag in args[:-1] and not args[args.index(flag) + 1].startswith("-"):
            return args[args.index(flag) + 1]
    return "run"


def one_line_errors(command: str | None = None) -> None:
    """Make an uncaught failure of this process print :func:`one_line_message` instead of a traceback.

    Called from the configs' ``initialize`` step, never on import. Without ``command`` it acts only in the process
    of ``python -m monai.bundle run <id>`` (and names the run id); a program running a config in its own process
    keeps its own exception hook. With ``MEDSYN_TRACEBACK=1`` in the environment nothing changes.
    """
    name = command or _bundle_command(sys.argv)
    if os.environ.get(TRACEBACK_ENV) or name is None:
        return

    def excepthook(kind: type[BaseException], err: BaseException, traceback: Any) -> None:
        print(one_line_message(name, err), file=sys.stderr)

    sys.excepthook = excepthook


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``<prog>: error: <message>; see --help``, exit
    status 2) instead of the whole usage text followed by the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see --help\n")


def run_main(command: str, main: Any) -> None:
    """``sys.exit(main())`` for a ``python -m scripts....`` entry, with any failure in one line
    (:func:`exit_in_one_line`)."""
    with exit_in_one_line(command):
        code = main()
    sys.exit(code)


def parse_bool(value: Any, option: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``) or a bool → bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"--{option} must be true or false, got {value!r}")


def parse_number(
    value: Any,
    option: str,
    kind: type = float,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | int:
    """A finite number of type ``kind`` (``int`` refuses fractions) within [minimum, maximum]; NaN and inf refused."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{option} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"--{option} must be a finite number, got {value!r}")
    if kind is int:
        if number != int(number):
            raise ValueError(f"--{option} must be a whole number, got {value!r}")
        number = int(number)
    if minimum is not None and number < minimum:
        raise ValueError(f"--{option} must be at least {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"--{option} must be at most {maximum}, got {value!r}")
    return number


def parse_optional_numbers(value: Any, option: str, count: int = 3, minimum: float | None = None) -> list[float] | None:
    """None / "null" / "none" → None, else exactly ``count`` finite numbers (e.g. ``--spacing [1.5,1.5,1.5]``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "")):
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != count:
        raise ValueError(f"--{option} must be {count} numbers [a, b, c] or null, got {value!r}")
    return [parse_number(v, option, minimum=minimum) for v in value]


def parse_tile(value: Any, option: str = "sr_tile") -> list[int] | str | None:
    """``--sr_tile``: a (D, H, W) list (-1 = whole axis), None / "null" / "none" for the whole volume, or "auto"
    (the whole volume when the device has room, else slabs)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"--{option} must be three sizes [D, H, W] (-1 = whole axis), null or auto, got {value!r}")
    sizes = [parse_number(v, option, int) for v in value]
    if any(v == 0 or v < -1 for v in sizes):
        raise ValueError(f"--{option} sizes must be positive or -1 (whole axis), got {value!r}")
    return sizes


__all__ = [
    "ArgumentParser",
    "TRACEBACK_ENV",
    "exit_in_one_line",
    "one_line_errors",
    "one_line_message",
    "parse_bool",
    "parse_number",
    "parse_optional_numbers",
    "parse_tile",
    "root_cause",
    "run_main",
]
