"""`saekit` command line: one module per command under saekit/cli/."""

from __future__ import annotations

import importlib
import os
import sys

from saekit.cli.common import Parser, report_error

# Each module exposes add_parser(subparsers) and run(args) -> int.
COMMANDS = [
    "train",
    "eval",
    "info",
    "report",
    "browse",
    "hookpoints",
    "cache",
    "convert",
]


def build_parser() -> tuple[Parser, dict]:
    parser = Parser(
        prog="saekit",
        description="Train, evaluate and inspect sparse autoencoders on neural-network activations.",
        epilog="Run 'saekit COMMAND --help' for the options of each command.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also: SAEKIT_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    modules = {}
    for name in COMMANDS:
        module = importlib.import_module(f"saekit.cli.{name}")
        module.add_parser(sub)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad argument already reported (2)
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("SAEKIT_DEBUG", "") not in ("", "0")
    prog = f"saekit {args.command}"
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except (Exception, RecursionError, MemoryError) as e:
        # Validation errors and whatever escaped it (an edited file's wrong type, a full
        # disk, ...): one line and exit code 2; the traceback is behind --debug.
        if debug:
            raise
        return report_error(prog, e)


if __name__ == "__main__":
    raise SystemExit(main())
