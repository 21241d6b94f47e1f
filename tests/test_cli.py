"""The command-line face: option values read strictly and named, failures in one line naming the root cause."""

from __future__ import annotations

import sys

import pytest

from scripts.cli import (
    ArgumentParser,
    _bundle_command,
    exit_in_one_line,
    one_line_errors,
    one_line_message,
    parse_bool,
    parse_number,
    parse_tile,
)


def test_option_values_are_read_strictly_and_named():
    assert parse_bool("TRUE", "overwrite") is True and parse_bool(0, "overwrite") is False
    assert parse_number("3", "steps", int, minimum=1) == 3 and parse_number(2.0, "steps", int) == 2
    assert parse_tile("auto") == "auto" and parse_tile("null") is None and parse_tile([8, -1, -1]) == [8, -1, -1]
    for call, message in [
        (lambda: parse_bool("maybe", "overwrite"), "--overwrite must be true or false"),
        (lambda: parse_bool(2, "overwrite"), "--overwrite must be true or false"),
        (lambda: parse_number(True, "seed", int), "--seed must be a number"),
        (lambda: parse_number("-inf", "lr"), "--lr must be a finite number"),
        (lambda: parse_number(1.5, "steps", int), "--steps must be a whole number"),
        (lambda: parse_number(0, "steps", int, minimum=1), "--steps must be at least 1"),
        (lambda: parse_tile([1, 2]), "--sr_tile must be three sizes"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def test_one_line_names_the_root_cause_under_monai_wrappers_only():
    try:
        try:
            raise ValueError("--x must be a number,\n got 'a'")
        except ValueError as err:
            raise RuntimeError(
                "Failed to instantiate component 'Runner' with keywords: x\n set '_mode_=debug'"
            ) from err
    except RuntimeError as wrapped:
        assert (
            one_line_message("inference", wrapped)
            == "medsyn inference failed: ValueError: --x must be a number, got 'a'"
        )
    try:
        try:
            raise KeyError("inner")
        except KeyError as err:
            raise OSError("our own message, which names the fix") from err
    except OSError as ours:
        assert one_line_message("x", ours) == "medsyn x failed: OSError: our own message, which names the fix"
    with pytest.raises(SystemExit, match="^medsyn run failed: ValueError: bad$"):
        with exit_in_one_line("run"):
            raise ValueError("bad")


def test_the_exception_hook_is_installed_for_the_bundle_command_line_only(monkeypatch, capsys):
    assert _bundle_command(["/env/lib/monai/bundle/__main__.py", "run", "synthesize", "--seed", "1"]) == "synthesize"
    assert _bundle_command(["/env/bin/pytest", "run", "x"]) is None
    monkeypatch.setattr(sys, "argv", ["/env/bin/pytest"])
    hook = sys.excepthook
    one_line_errors()
    assert sys.excepthook is hook  # a program running a config keeps its own hook
    monkeypatch.setattr(sys, "excepthook", hook)
    one_line_errors("training")
    sys.excepthook(ValueError, ValueError("no"), None)
    assert capsys.readouterr().err == "medsyn training failed: ValueError: no\n"


def test_usage_errors_are_one_line(capsys):
    parser = ArgumentParser(prog="python -m scripts.x")
    parser.add_argument("--num", type=int)
    with pytest.raises(SystemExit) as raised:
        parser.parse_args(["--num", "abc"])
    assert raised.value.code == 2
    assert (
        capsys.readouterr().err == "python -m scripts.x: error: argument --num: invalid int value: 'abc'; see --help\n"
    )
