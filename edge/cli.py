"""The ``edge`` command.

Subcommands arrive with the features behind them; none exists before it works.
Exit codes: 0 success, 2 bad input (config, arguments), 70 crash loop of the runtime.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge import __version__, config
from edge.errors import ConfigError

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def _config_check(args: argparse.Namespace) -> int:
    try:
        config.load(args.file)
    except ConfigError as exc:
        print(f"edge: {args.file} is invalid: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.file}: ok")
    return EXIT_OK


def _config_show(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.file) if args.file else config.Config()
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sys.stdout.write(config.dump(cfg))
    return EXIT_OK


def _version(args: argparse.Namespace) -> int:
    print(f"edge {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge",
        description="Actor-based IoT edge runtime: gateway, server and tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="check or show a config file")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = cfg_sub.add_parser("check", help="validate a config file; exit 2 listing every problem")
    check.add_argument("file", help="TOML config file")
    check.set_defaults(func=_config_check)
    show = cfg_sub.add_parser("show", help="print the effective config, secrets masked")
    show.add_argument("file", nargs="?", help="TOML config file (defaults only when omitted)")
    show.set_defaults(func=_config_show)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
