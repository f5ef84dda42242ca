"""Command line: ``python -m asyncpool {demo,size,server}`` and ``--version``."""

from __future__ import annotations

import sys

USAGE = """\
usage: python -m asyncpool [--version] {demo,size,server} [options]

  demo     compare one shared connection, a connection per request and a pool
  size     recommend pool sizes from the server's own facts
  server   run a throwaway PostgreSQL from the local binaries until Ctrl-C

'python -m asyncpool COMMAND --help' describes a command's options."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args[0] in ("-V", "--version"):
        from . import __version__

        print(f"asyncpool {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "demo":
        from ._demo import main as demo

        return demo(rest)
    if command == "size":
        from .sizing import main as size

        return size(rest)
    if command == "server":
        from ._server import main as server

        return server(rest)
    print(
        f"python -m asyncpool: unknown command {command!r} (try demo, size or server)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
