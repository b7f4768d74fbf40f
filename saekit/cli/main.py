"""`saekit` command line: one module per command under saekit/cli/."""

from __future__ import annotations

import importlib
import os
import sys

from saekit.cli.common import Parser, UsageError

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

USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, ValueError, OSError)


def one_line(e: BaseException) -> str:
    """The error as one line. Our own error types carry sentences; anything else (a
    KeyError from an edited file, a torch RuntimeError...) is named by its type as well."""
    text = " ".join(str(e).split()) or repr(e)
    if len(text) > 1000:
        text = text[:1000] + " ..."
    from saekit.formats.native import SAEFileError
    from saekit.training.checkpoint import CheckpointError

    if isinstance(e, (*USER_ERRORS, SAEFileError, CheckpointError)):
        return text
    return f"{type(e).__name__}: {text} (run 'saekit --debug ...' for the traceback)"


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
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from saekit.formats.native import SAEFileError
    from saekit.training.checkpoint import CheckpointError
    from saekit.training.distributed import DistributedError

    debug = args.debug or os.environ.get("SAEKIT_DEBUG", "") not in ("", "0")
    try:
        return int(modules[args.command].run(args) or 0)
    except (*USER_ERRORS, SAEFileError, CheckpointError, DistributedError) as e:
        if debug:
            raise
        sys.stderr.write(f"saekit {args.command}: error: {one_line(e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"saekit {args.command}: interrupted\n")
        return 130
    except (Exception, RecursionError, MemoryError) as e:
        # Whatever escaped validation (an edited file's wrong type, a full disk, ...): still
        # one line and exit code 2 for the user; the traceback is behind --debug.
        if debug:
            raise
        sys.stderr.write(f"saekit {args.command}: error: {one_line(e)}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
