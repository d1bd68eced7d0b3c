"""The sandbox's configuration: its fake credentials, limits, latencies and seeds. Read by the
server, both fake APIs and the controls; imports nothing of the sandbox, so nothing imports in a circle.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wdt_app_key: str = "sandbox-wdt-key"
    wdt_app_secret: str = "sandbox-wdt-secret"
    wdt_sid: str = "sandbox-sid"
    wdt_target_app_key: str = "21363512"
    bip_tenant_id: str = "sandbox-tenant"
    bip_app_key: str = "sandbox-bip-key"
    bip_app_secret: str = "sandbox-bip-secret"
    token_lifetime_s: float = 7200
    replay_window_s: float = 3600  # resubmitCheckKey replays answer the stored result this long
    # None: a key is remembered for good ("duplicate submission" after the replay window); a number: the
    # gateway forgets a key after this many seconds and saves it again, as a forgetful one would
    bip_key_memory_s: float | None = None
    timestamp_skew_s: int = 600
    numbering: Literal["auto", "manual"] = "auto"
    wdt_total_count_every_page: bool = False
    wdt_rate_per_min: float | None = None
    bip_rate_per_s: float | None = None
    rate_window_s: float | None = None  # None: token buckets; else sliding windows of this many seconds
    bip_latency_ms: float = 0
    bip_list_ignores_filters: bool = False  # othoutrecord/list honours only pageIndex, pageSize, code
    bip_list_omits_fields: bool = False  # its rows carry only id, code, vouchdate, warehouse, status
    wdt_latency_ms: float = 0
    # Editions differ (docs/apis.md): True answers a stockout_no query without start_time/end_time
    # 11000000 / isv.invalid-parameter "start_time和end_time不能为空", as the strict ones do
    wdt_lookup_needs_window: bool = False
    fault_seed: int = 0
    data_seed: int = 42
