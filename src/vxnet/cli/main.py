"""`vxnet` console entry point.

`vxnet agent ...` runs the host agent straight from `vxnet.cli.agent` (argparse, standard
library): a long-running process on every host should hold only what it needs, and the typer
app (`vxnet.cli.app`) would load typer, pydantic (typer's parameter adapters, when a command
runs) and every other sub-command's module, about 10 MB of resident memory for nothing. Every
other command goes through the typer app, which also lists `agent` in `vxnet --help` and hands
it to the same parser.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console script entry point."""
    try:
        if sys.argv[1:2] == ["agent"]:
            from vxnet.cli.agent import main as agent_main

            sys.exit(agent_main(sys.argv[2:]))
        from vxnet.cli.app import app

        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
