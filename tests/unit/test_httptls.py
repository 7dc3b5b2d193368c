"""The project's HTTP clients: plain-HTTP URLs share one context that loads no CA; https keeps
the verified default (vxnet/httptls.py)."""

from __future__ import annotations

import ssl

import httpx

from vxnet.httptls import verify_for


def test_plain_urls_share_one_context_that_trusts_nothing() -> None:
    a, b, c = verify_for("http://192.0.2.1:9696"), verify_for(" HTTP://198.51.100.2/"), verify_for("unix:///run/x.sock")
    assert isinstance(a, ssl.SSLContext) and a is b is c
    assert a.get_ca_certs() == [] and a.verify_mode == ssl.CERT_REQUIRED   # were it used, nothing verifies


def test_https_keeps_the_ca_bundle() -> None:
    assert verify_for("https://192.0.2.1:9696") is True
    with httpx.Client(verify=verify_for("https://192.0.2.1:9696")) as c:
        ctx = c._transport._pool._ssl_context       # type: ignore[attr-defined]
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.get_ca_certs() != []


def test_lab_cli_demo_and_trace_clients_use_it() -> None:
    # Each product client of a plain-HTTP server is built with verify_for (no CA bundle loaded
    # per client: ~67 ms each on the CI VM); a new client site without it shows here.
    import inspect

    from vxnet.cli import ops
    from vxnet.cli import trace as cli_trace
    from vxnet.demo import scenario
    from vxnet.lab import lab
    from vxnet.trace import snapshot

    for mod in (lab, ops, cli_trace, scenario, snapshot):
        src = inspect.getsource(mod)
        calls = src.count("httpx.Client(") + src.count("httpx.post(") + src.count("httpx.get(")
        assert calls and src.count("verify=verify_for(") == calls, mod.__name__
