"""The lab's server process: one vxnet server application listening on several addresses.

Why: the hosts (namespaces) reach it on the management address, the machine itself on the
config's listen address, and both must be one process so the in-process store notifications
reach every agent stream. Run as `python -m vxnet.lab.server --config F --listen A --listen B`.
"""

from __future__ import annotations

import argparse
import socket

import uvicorn

from vxnet import logsetup
from vxnet.api.app import create_app
from vxnet.config import load_config
from vxnet.store import open_store


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted sockets: without it a response written in two parts waits for the
    # client's delayed ACK (Nagle), ~40 ms per request here.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((host.strip("[]") or "127.0.0.1", int(port)))
    s.listen(1024)
    s.set_inheritable(True)
    return s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--listen", action="append", required=True)
    ap.add_argument("--store")
    ap.add_argument("--data-dir")
    ap.add_argument("--log-level", default=None)
    ap.add_argument("--log-format", default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.config).with_overrides(store=args.store, data_dir=args.data_dir, listen=args.listen[0],
                                                  log_format=args.log_format)
    args.log_level = args.log_level or cfg.log_level or "warning"
    logsetup.configure(args.log_level, cfg.log_format)
    logsetup.reload_on_sighup(lambda: load_config(args.config).log_level)
    store = open_store(cfg.store, cfg.data_dir)
    sockets = [_bind(a) for a in args.listen]
    app = create_app(cfg, store)
    # Agent view streams never end by themselves: without a bound, SIGTERM waits on them.
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False, timeout_graceful_shutdown=1,
                                           **({"log_config": None} if cfg.log_format == "json" else {})))
    try:
        server.run(sockets=sockets)
    finally:
        store.close()


if __name__ == "__main__":
    main()
