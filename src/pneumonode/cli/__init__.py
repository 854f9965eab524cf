"""The ``pneumonode`` command line, one module per group of commands (``--help`` lists them
the same way): :mod:`~pneumonode.cli.node` runs the node, :mod:`~pneumonode.cli.results` shows
what it did, :mod:`~pneumonode.cli.data` and :mod:`~pneumonode.cli.model` are the training
data and the model, :mod:`~pneumonode.cli.tools` are checks. Each command delegates to a
package; :mod:`~pneumonode.cli.common` holds what the groups share.

Exit codes: 0 success; 1 an error (one line on stderr); 2 a usage error; 3 some inputs failed
while the rest succeeded (details in the command's summary).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pydicom.config

from pneumonode import __version__
from pneumonode.cli import data, feedback, model, node, results, tools
from pneumonode.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    CliError,
    CommandGroup,
)
from pneumonode.cli.results import AUDIT_COLUMNS, RESULT_COLUMNS
from pneumonode.config import ConfigError, load_settings, unknown_environment
from pneumonode.logs import configure_logging

__all__ = [
    "AUDIT_COLUMNS",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "RESULT_COLUMNS",
    "build_parser",
    "main",
]

log = logging.getLogger("pneumonode")

#: The groups of ``pneumonode --help``, in its order: a heading and the module adding them.
GROUPS = (
    ("run the node (operators)", node.add_commands),
    ("results and records (operators)", results.add_commands),
    ("feedback and alerts (radiologists' loop)", feedback.add_commands),
    ("training data (ML engineers)", data.add_commands),
    ("the model (ML engineers)", model.add_commands),
    ("checks (operators, developers)", tools.add_commands),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``--help`` lists the commands by group."""
    parser = argparse.ArgumentParser(
        prog="pneumonode",
        description="A DICOM node that finds pneumothorax on chest radiographs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pneumonode {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (overrides PNEUMONODE_CONFIG_FILE)",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of the commands below; `pneumonode COMMAND --help` for its options",
    )
    groups = []
    for title, add_commands in GROUPS:
        group = CommandGroup(title, sub)
        add_commands(group)
        groups.append(group)
    parser.epilog = _overview(groups)
    return parser


def _overview(groups: Sequence[CommandGroup]) -> str:
    """The commands under their group's heading, laid out as argparse lays out options."""
    width = max(shutil.get_terminal_size().columns - 2, 60)
    indent = max(len(name) for group in groups for name, _ in group.commands) + 4
    lines: list[str] = []
    for group in groups:
        lines.append(f"{group.title}:")
        for name, text in group.commands:
            wrapped = textwrap.wrap(text, width - indent) or [""]
            lines.append(f"  {name:{indent - 2}}{wrapped[0]}")
            lines += [" " * indent + rest for rest in wrapped[1:]]
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # echo/send/resend: their outcome is our one line on stderr
    configure_logging(settings, quiet_network=args.command in ("echo", "send", "resend"))
    for warning in unknown_environment():
        log.warning(warning)
    # pydicom's value validation warnings quote values, which may be patient data
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    inference_defaults = {
        "device": settings.device,
        "precision": settings.inference_precision,
        "backend": settings.inference_backend,
    }
    for name, value in inference_defaults.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, value)
    from pneumonode.startup import NODE_PARTS, StartupError, check_startup

    try:
        if args.command in NODE_PARTS:  # before anything starts: the data folder, ports, ...
            check_startup(settings, args.command)
        exit_code: int = args.handler(settings, args)
        return exit_code
    except (CliError, StartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # the reader stopped early (`pneumonode results | head`): no error, as other tools;
        # stdout goes to /dev/null so that Python's flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:  # unwritable output folder, disk full, ...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
