"""`python -m bench`: run every benchmark, print a table per benchmark, rewrite docs/benchmarks.md.

    .venv/bin/python -m bench                 # everything, full size
    .venv/bin/python -m bench --quick         # a tenth of the work, for a smoke run
    .venv/bin/python -m bench --only api_bench --profile

Each module in MODULES exposes `NAME`, `run(opts) -> bench.report.Report` and optionally
`add_arguments(parser)`; `python -m bench.<module> ARGS` is `python -m bench --only <module> ARGS`
(the same table, and the same --quick/--no-write meaning). Shared pieces: bench/servers.py (API
servers and etcd members as processes, tokens, /proc figures), bench/common.py (a `vxnet lab`,
lab VMs, per-row iperf3/ping rounds and their cells), bench/kernel_lab.py (the hand-built
reference data path), bench/report.py (tables). docs/benchmarks.md keeps one section per module between
`<!-- bench:<module> -->` markers; a run replaces the sections of the modules it ran (with the
machine, the date and the exact command) and keeps the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import re
import shlex
import subprocess
import sys

from bench.report import Report, markdown_table, text_table

MODULES = ["api_bench", "quota_bench", "port_up_bench", "agent_bench", "fanout_bench", "dataplane_bench", "underlay_bench", "scale_bench", "migration_bench", "gateway_bench", "gateway_ha_bench", "routing_bench", "ipv6_routing_bench", "firewall_bench", "nft_portup_bench", "ipv6_bench", "nova_events_bench", "metadata_bench", "qemu_bench"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "benchmarks.md")
HEADER = """# Benchmarks

Produced by `python -m bench` (see `bench/`); each section is rewritten by the run that measured
it. Figures are from one run on the machine named in the section: compare them only with figures
from the same machine.
"""


def machine() -> str:
    """CPU model, cores, memory, kernel, Python and SQLite versions."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    import sqlite3

    return (f"{cpu}, {os.cpu_count()} vCPU, {mem} RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip() or "?"
    except OSError:
        return "?"


def section(module: str, rep: Report, command: str, when: str) -> str:
    parts = [f"<!-- bench:{module} -->", f"## {rep.name}", "",
             f"- Date: {when}", f"- Machine: {machine()}", f"- Commit: {git_commit()}",
             f"- Command: `{command}`", ""]
    parts += [markdown_table(rep.columns, rep.rows), ""]
    parts += [f"- {g}" for g in rep.goals + rep.notes]
    if rep.extra_markdown:
        parts += ["", rep.extra_markdown]
    parts += [f"<!-- /bench:{module} -->"]
    return "\n".join(parts)


def write_doc(sections: dict[str, str]) -> None:
    text = HEADER
    if os.path.exists(DOC):
        with open(DOC) as f:
            text = f.read()
    for module, body in sections.items():
        pattern = re.compile(rf"<!-- bench:{module} -->.*?<!-- /bench:{module} -->", re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _m, b=body: b, text)
        else:
            text = text.rstrip("\n") + "\n\n" + body + "\n"
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write(text.rstrip("\n") + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=MODULES, help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the work (smoke run; not for the docs)")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    modules = {name: importlib.import_module(f"bench.{name}") for name in MODULES}
    for mod in modules.values():
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(parser)
    opts = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "-m", "bench", *argv])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections: dict[str, str] = {}
    for name, mod in modules.items():
        if opts.only and name not in opts.only:
            continue
        print(f"== {mod.NAME} ==", flush=True)
        rep: Report = mod.run(opts)
        print(text_table(rep.columns, rep.rows))
        for line in rep.goals + rep.notes:
            print("  " + line)
        print(flush=True)
        sections[name] = section(name, rep, command, when)
    if not opts.no_write and not opts.quick:
        write_doc(sections)
        print(f"wrote {os.path.relpath(DOC, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
