"""`saekit` command line: one module per command under saekit/cli/."""

from __future__ import annotations

import importlib
import sys

from saekit.cli.common import Parser, UsageError

# Each module exposes add_parser(subparsers) and run(args) -> int.
COMMANDS = [
    "train",
    "eval",
    "info",
    "report",
    "browse",
    "adaptive",
    "afa",
    "gsae",
    "hookpoints",
    "cache",
    "convert",
]

USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, ValueError, FileNotFoundError)


def build_parser() -> tuple[Parser, dict]:
    parser = Parser(
        prog="saekit",
        description="Train, evaluate and inspect sparse autoencoders on neural-network activations.",
        epilog="Run 'saekit COMMAND --help' for the options of each command.",
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
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from saekit.formats.native import SAEFileError
    from saekit.training.checkpoint import CheckpointError
    from saekit.training.distributed import DistributedError

    try:
        return int(modules[args.command].run(args) or 0)
    except (*USER_ERRORS, SAEFileError, CheckpointError, DistributedError) as e:
        sys.stderr.write(f"saekit {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"saekit {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
