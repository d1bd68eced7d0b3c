"""A strict stand-in for 旺店通 (Qimen `wdt.stockout.order.query`) and 用友BIP (token, other
outbound record save/list/detail) over real HTTP, with fault injection, for tests, demo and bench.

    with Sandbox(SandboxConfig()) as sb:
        sb.generate(100, bad=3)
        ...  # point the service at sb.env()
        assert sb.counters()["duplicate_stockouts"] == 0
"""
from .config import SandboxConfig
from .control import SandboxControl
from .server import Sandbox, serve

__all__ = ["Sandbox", "SandboxConfig", "SandboxControl", "serve"]
