"""Command line: ``python -m asyncpool demo`` and ``python -m asyncpool size``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m asyncpool {demo,size} [options]\n\n"
            "  demo   compare one shared connection, a connection per request and a pool\n"
            "  size   recommend pool sizes from the server's own facts"
        )
        return 0
    command, rest = args[0], args[1:]
    if command == "demo":
        from ._demo import main as demo

        return demo(rest)
    if command == "size":
        from .sizing import main as size

        return size(rest)
    print(f"python -m asyncpool: unknown command {command!r} (try demo or size)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
