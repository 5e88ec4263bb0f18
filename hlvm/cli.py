"""The ``hlvm`` command line: ``hlvm demo`` (more subcommands register themselves below).

Bad input exits with code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "CLIError"]


class CLIError(Exception):
    """A user error: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _demo(args) -> None:
    from .demo import run_demo

    run_demo(batch_size=args.batch_size, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hlvm", description="VAEs, HVAEs and VDMs as Pyro directed graphical models")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = sub.add_parser("demo", help="the main job on the embedded MNIST subset")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, FileNotFoundError) as e:
        print(f"hlvm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hlvm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
