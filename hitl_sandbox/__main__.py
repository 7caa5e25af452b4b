"""``python -m hitl_sandbox [--host H] [--port P] ...``: run the sandbox in the foreground."""

from __future__ import annotations

import argparse

from hitl_sandbox.server import add_arguments, options_from_args, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hitl_sandbox", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    serve(options_from_args(args), args.host, args.port)


if __name__ == "__main__":
    main()
