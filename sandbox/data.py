"""Master data of the fake BIP tenant and a deterministic generator of WDT stockouts.

The demo mapping file is written against these constants, so they are the sandbox's contract:
WDT warehouse `WH-SH01` ↔ BIP warehouse `SH01`, WDT spec_no `SKU-0007` = BIP material `SKU-0007`,
WDT unit 件/箱/个 ↔ BIP unit PCS/BOX/EA. Every value in a generated stockout is a string, as WDT
sends them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from shared.core.timeutil import ZERO_DATETIME, format_wire, now_beijing, to_beijing

# ---------------------------------------------------------------------------------------------
# field tables (seed/000_581db12e35288249.txt), in the seed's order

STOCKOUT_FIELDS = (
    "stockout_id", "order_no", "src_order_no", "warehouse_no", "status", "consign_time",
    "order_type", "order_type_name", "subtype", "stockout_reason", "goods_count",
    "goods_total_amount", "goods_total_cost", "post_fee", "logistics_no", "package_fee",
    "receiver_name", "receiver_country", "receiver_province", "receiver_city", "receiver_district",
    "receiver_address", "receiver_mobile", "receiver_telno", "receiver_zip", "weight", "remark",
    "outer_no", "operator_name", "logistics_type", "logistics_code", "logistics_name", "details_list",
)
# not in the seed's table but sent by WDT and needed: the window filters on `modified`
EXTRA_STOCKOUT_FIELDS = ("modified", "created")
DETAIL_FIELDS = (
    "stockout_id", "rec_id", "spec_no", "goods_count", "sell_price", "brand_no", "brand_name",
    "goods_name", "goods_no", "spec_name", "spec_code", "cost_price", "total_amount", "weight",
    "remark", "goods_unit", "batch_no", "batch_remark", "expire_date", "position_list",
)
POSITION_FIELDS = (
    "position_id", "position_no", "position_goods_count", "stockout_order_detail_id", "rec_id",
    "stock_spec_detail_id", "stockin_detail_id", "batch_id", "batch_no", "cost_price", "modified",
    "v_stock_spec_detail_id", "expire_date", "created",
)

STATUSES = {"5": "已取消", "50": "待审核", "55": "已审核", "95": "已发货", "110": "已完成", "113": "异常发货"}
FETCHED_STATUSES = ("95", "110")  # what wdt.stockout.order.query returns without a status filter
ORDER_TYPES = {
    "2": "调拨出库", "3": "采购退货出库", "4": "盘亏出库", "5": "生产出库", "7": "其他出库",
    "8": "多发出库", "9": "纠错出库", "10": "保修配件出库", "11": "初始化出库", "12": "JIT拣货出库",
    "13": "委外出库",
}

# ---------------------------------------------------------------------------------------------
# master data


def _bip_id(kind: int, n: int) -> str:
    """A 19-digit id, distinct per kind, as BIP's own ids are."""
    return str(1_700_000_000_000_000_000 + kind * 10_000_000_000_000_000 + n)


WDT_WAREHOUSES = ("WH-SH01", "WH-BJ02", "WH-GZ03")
BAD_WAREHOUSE = "WH-XX99"
WAREHOUSE_MAP = {"WH-SH01": "SH01", "WH-BJ02": "BJ02", "WH-GZ03": "GZ03"}  # WDT warehouse_no → BIP code

BIP_ORGS = {
    "ORG-EAST": {"id": _bip_id(1, 1), "name": "华东库存组织"},
    "ORG-NORTH": {"id": _bip_id(1, 2), "name": "华北库存组织"},
}
# `org` is informational (which inventory org a warehouse belongs to); saves do not enforce it
BIP_WAREHOUSES = {
    "SH01": {"id": _bip_id(2, 1), "name": "上海仓", "org": "ORG-EAST"},
    "BJ02": {"id": _bip_id(2, 2), "name": "北京仓", "org": "ORG-NORTH"},
    "GZ03": {"id": _bip_id(2, 3), "name": "广州仓", "org": "ORG-EAST"},
}
BIP_BUSTYPES = {  # A10002/A10003: tenants booking 调拨 and 采购退货 under their own 交易类型 ([bustypes])
    "A10001": {"id": _bip_id(3, 1), "name": "其他出库"},
    "A10002": {"id": _bip_id(3, 2), "name": "调拨出库"},
    "A10003": {"id": _bip_id(3, 3), "name": "采购退货出库"},
}
BIP_UNITS = {
    "PCS": {"id": _bip_id(4, 1), "name": "件"},
    "BOX": {"id": _bip_id(4, 2), "name": "箱"},
    "EA": {"id": _bip_id(4, 3), "name": "个"},
}
WDT_UNITS = ("件", "箱", "个")
UNIT_MAP = {"件": "PCS", "箱": "BOX", "个": "EA"}  # WDT goods_unit → BIP unit code

BAD_MATERIAL = "SKU-GHOST"
BATCH_MANAGED = frozenset(f"SKU-{n:04d}" for n in range(41, 51))

_NOUNS = ("纯棉T恤", "保温杯", "蓝牙耳机", "帆布包", "陶瓷碗", "不锈钢锅", "羊毛围巾", "收纳盒", "护手霜", "绿茶礼盒")
_VARIANTS = ("经典款", "升级款", "礼盒装", "家庭装", "便携款")
_SPECS = ("红色/L", "蓝色/M", "白色/S", "黑色/XL", "灰色/均码")
_BRANDS = (("B01", "优品"), ("B02", "匠心"), ("B03", "山野"))


@dataclass(frozen=True)
class Material:
    code: str  # the BIP material code, equal to WDT's spec_no
    id: str
    goods_no: str
    name: str
    spec_name: str
    spec_code: str
    wdt_unit: str
    bip_unit: str
    brand_no: str
    brand_name: str
    price: Decimal
    weight: Decimal
    batch_managed: bool


def _material(n: int) -> Material:
    noun, variant = _NOUNS[(n - 1) % len(_NOUNS)], _VARIANTS[(n - 1) // len(_NOUNS) % len(_VARIANTS)]
    unit = WDT_UNITS[n % len(WDT_UNITS)]
    brand_no, brand_name = _BRANDS[n % len(_BRANDS)]
    code = f"SKU-{n:04d}"
    return Material(
        code=code,
        id=_bip_id(5, n),
        goods_no=f"G-{n:04d}",
        name=f"{noun}{variant}",
        spec_name=_SPECS[n % len(_SPECS)],
        spec_code=f"SPEC-{n:04d}",
        wdt_unit=unit,
        bip_unit=UNIT_MAP[unit],
        brand_no=brand_no,
        brand_name=brand_name,
        price=Decimal(9 + (n * 37) % 290) + Decimal("0.90"),
        weight=Decimal((n * 13) % 50 + 1) / Decimal(10),
        batch_managed=code in BATCH_MANAGED,
    )


MATERIALS = {m.code: m for m in (_material(n) for n in range(1, 51))}


class MasterData:
    """Lookups that accept a code or an id, as every BIP reference field does."""

    def __init__(self) -> None:
        self._by_kind = {
            "org": _index(BIP_ORGS),
            "warehouse": _index(BIP_WAREHOUSES),
            "bustype": _index(BIP_BUSTYPES),
            "unit": _index(BIP_UNITS),
            "product": _index({m.code: {"id": m.id} for m in MATERIALS.values()}),
        }

    def code_of(self, kind: str, value: Any) -> str | None:
        """The code behind `value` (a code or an id), or None when the tenant has no such thing."""
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            return None
        return self._by_kind[kind].get(str(value))


def _index(table: dict[str, dict[str, str]]) -> dict[str, str]:
    index = {code: code for code in table}
    index.update({row["id"]: code for code, row in table.items()})
    return index


MASTER = MasterData()

# ---------------------------------------------------------------------------------------------
# the generator

BAD_UNKNOWN_WAREHOUSE = "unknown_warehouse"
BAD_UNKNOWN_MATERIAL = "unknown_material"
BAD_EMPTY_DETAILS = "empty_details"
BAD_KINDS = (BAD_UNKNOWN_WAREHOUSE, BAD_UNKNOWN_MATERIAL, BAD_EMPTY_DETAILS)

_STATUS_WEIGHTS = (("95", 45), ("110", 40), ("5", 5), ("55", 5), ("113", 5))
_OTHER_ORDER_TYPES = tuple(t for t in ORDER_TYPES if t != "7")
_REASONS = ("样品领用", "报废出库", "赠品出库", "内部领用", "展会借出")
_OPERATORS = ("王芳", "李强", "张伟", "刘洋", "陈静")
_REGIONS = (("上海", "上海市", "浦东新区", "200120"), ("北京", "北京市", "朝阳区", "100020"),
            ("广东省", "广州市", "天河区", "510630"), ("浙江省", "杭州市", "西湖区", "310013"))
_LOGISTICS = (("1", "YTO", "圆通速递"), ("2", "SF", "顺丰速运"), ("3", "ZTO", "中通快递"))
Q4 = Decimal("0.0000")


def num(value: Decimal | int) -> str:
    """WDT's number form: four decimals, as a string."""
    return str(Decimal(value).quantize(Q4))


@dataclass
class GeneratedBatch:
    stockouts: list[dict[str, Any]]
    bad_reasons: dict[str, str] = field(default_factory=dict)


def default_window(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last 24 hours ending ten minutes ago: old enough for a producer's settle delay."""
    end = to_beijing(now or now_beijing()).replace(microsecond=0) - timedelta(minutes=10)
    return end - timedelta(hours=24), end


def generate_stockouts(
    count: int,
    *,
    first_id: int,
    seed: int,
    bad: int = 0,
    start: datetime | None = None,
    end: datetime | None = None,
) -> GeneratedBatch:
    """`count` stockouts with ids `first_id`, `first_id+1`, …; the same arguments give the same
    stockouts. `bad` of them, all in a fetched status, are broken in one way each (BAD_KINDS, in
    turn)."""
    if count < 0 or not 0 <= bad <= count:
        raise ValueError(f"need 0 ≤ bad ≤ count, got count={count} bad={bad}")
    start, end = _window(start, end)
    if start > end:
        raise ValueError(f"start {format_wire(start)} is after end {format_wire(end)}")
    rng = random.Random(seed)
    span = int((end - start).total_seconds())
    stockouts = [
        _stockout(rng, first_id + i, start + timedelta(seconds=rng.randint(0, span)), start)
        for i in range(count)
    ]
    reasons: dict[str, str] = {}
    for k, index in enumerate(sorted(rng.sample(range(count), bad))):
        reasons[stockouts[index]["stockout_id"]] = _break(rng, stockouts[index], BAD_KINDS[k % len(BAD_KINDS)])
    return GeneratedBatch(stockouts, reasons)


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    if start is None:
        if end is None:
            return default_window()
        start = to_beijing(end) - timedelta(hours=24)
    if end is None:
        end = to_beijing(start) + timedelta(hours=24)
    return to_beijing(start).replace(microsecond=0), to_beijing(end).replace(microsecond=0)


def _weighted(rng: random.Random, pairs: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([v for v, _ in pairs], weights=[w for _, w in pairs])[0]


def _stockout(rng: random.Random, stockout_id: int, modified: datetime, earliest: datetime) -> dict[str, Any]:
    sid = str(stockout_id)
    status = _weighted(rng, _STATUS_WEIGHTS)
    order_type = "7" if rng.random() < 0.7 else rng.choice(_OTHER_ORDER_TYPES)
    created = max(earliest, modified - timedelta(seconds=rng.randint(60, 6 * 3600)))
    shipped = status in ("95", "110", "113")
    consign = created + (modified - created) * rng.random() if shipped else None
    province, city, district, zip_code = rng.choice(_REGIONS)
    logistics_type, logistics_code, logistics_name = rng.choice(_LOGISTICS)
    details = [
        _detail(rng, sid, line, material, modified, created)
        for line, material in enumerate(rng.sample(sorted(MATERIALS), rng.randint(1, 5)), start=1)
    ]
    stockout = {
        "stockout_id": sid,
        "order_no": f"CK{created:%Y%m%d}{stockout_id % 1_000_000:04d}",
        "src_order_no": f"QT{created:%Y%m%d}{rng.randint(0, 99999):05d}",
        "warehouse_no": rng.choice(WDT_WAREHOUSES),
        "status": status,
        "consign_time": format_wire(consign) if consign else ZERO_DATETIME,
        "order_type": order_type,
        "order_type_name": ORDER_TYPES[order_type],
        "subtype": "0",
        "stockout_reason": rng.choice(_REASONS) if order_type == "7" else "",
        "goods_count": "",
        "goods_total_amount": "",
        "goods_total_cost": "",
        "post_fee": num(0),
        "logistics_no": f"{logistics_code}{rng.randint(10**11, 10**12 - 1)}" if shipped else "",
        "package_fee": num(0),
        "receiver_name": "",
        "receiver_country": "中国",
        "receiver_province": province,
        "receiver_city": city,
        "receiver_district": district,
        "receiver_address": "",
        "receiver_mobile": "",
        "receiver_telno": "",
        "receiver_zip": zip_code,
        "weight": "",
        "remark": rng.choice(("", "", "", "加急", "客户自提")),
        "outer_no": "",
        "operator_name": rng.choice(_OPERATORS),
        "logistics_type": logistics_type,
        "logistics_code": logistics_code,
        "logistics_name": logistics_name,
        "details_list": details,
        "modified": format_wire(modified),
        "created": format_wire(created),
    }
    _total(stockout)
    return stockout


def _detail(
    rng: random.Random, sid: str, line: int, code: str, modified: datetime, created: datetime
) -> dict[str, Any]:
    m = MATERIALS[code]
    count = rng.randint(1, 20)
    cost = (m.price * Decimal("0.6")).quantize(Q4)
    rec_id = f"{sid}{line:02d}"
    batch_no = f"B{created:%Y%m}{rng.randint(1, 99):02d}" if m.batch_managed else ""
    expire = format_wire(created + timedelta(days=rng.randint(180, 720))) if m.batch_managed else ZERO_DATETIME
    return {
        "stockout_id": sid,
        "rec_id": rec_id,
        "spec_no": m.code,
        "goods_count": num(count),
        "sell_price": num(m.price),
        "brand_no": m.brand_no,
        "brand_name": m.brand_name,
        "goods_name": m.name,
        "goods_no": m.goods_no,
        "spec_name": m.spec_name,
        "spec_code": m.spec_code,
        "cost_price": num(cost),
        "total_amount": num(m.price * count),
        "weight": num(m.weight * count),
        "remark": "",
        "goods_unit": m.wdt_unit,
        "batch_no": batch_no,
        "batch_remark": "",
        "expire_date": expire,
        "position_list": _positions(rng, rec_id, count, cost, batch_no, expire, modified, created),
    }


def _positions(rng: random.Random, rec_id: str, count: int, cost: Decimal, batch_no: str, expire: str,
               modified: datetime, created: datetime) -> list[dict[str, str]]:
    split = rng.randint(1, count - 1) if count > 1 and rng.random() < 0.5 else count
    parts = [split, count - split] if split < count else [count]
    return [
        {
            "position_id": str(100 + rng.randint(1, 400)),
            "position_no": f"A-{rng.randint(1, 20):02d}-{rng.randint(1, 30):02d}",
            "position_goods_count": num(qty),
            "stockout_order_detail_id": rec_id,
            "rec_id": f"{rec_id}{n}",
            "stock_spec_detail_id": str(rng.randint(10**6, 10**7 - 1)),
            "stockin_detail_id": str(rng.randint(10**6, 10**7 - 1)),
            "batch_id": str(rng.randint(1000, 9999)) if batch_no else "0",
            "batch_no": batch_no,
            "cost_price": num(cost),
            "modified": format_wire(modified),
            "v_stock_spec_detail_id": str(rng.randint(10**6, 10**7 - 1)),
            "expire_date": expire,
            "created": format_wire(created),
        }
        for n, qty in enumerate(parts, start=1)
    ]


def _total(stockout: dict[str, Any]) -> None:
    lines = stockout["details_list"]
    stockout["goods_count"] = num(sum((Decimal(d["goods_count"]) for d in lines), Decimal(0)))
    stockout["goods_total_amount"] = num(sum((Decimal(d["total_amount"]) for d in lines), Decimal(0)))
    stockout["goods_total_cost"] = num(
        sum((Decimal(d["cost_price"]) * Decimal(d["goods_count"]) for d in lines), Decimal(0))
    )
    stockout["weight"] = num(sum((Decimal(d["weight"]) for d in lines), Decimal(0)))


def _break(rng: random.Random, stockout: dict[str, Any], kind: str) -> str:
    # a bad stockout must still be fetched by a default query, or nobody would ever see it fail
    if stockout["status"] not in FETCHED_STATUSES:
        stockout["status"] = rng.choice(FETCHED_STATUSES)
        stockout["consign_time"] = stockout["modified"]
    if kind == BAD_UNKNOWN_WAREHOUSE:
        stockout["warehouse_no"] = BAD_WAREHOUSE
    elif kind == BAD_UNKNOWN_MATERIAL:
        line = stockout["details_list"][0]
        line.update(spec_no=BAD_MATERIAL, goods_no="G-GHOST", goods_name="幽灵货品", spec_code="SPEC-GHOST",
                    batch_no="", expire_date=ZERO_DATETIME)
        for position in line["position_list"]:
            position.update(batch_no="", batch_id="0", expire_date=ZERO_DATETIME)
    else:
        stockout["details_list"] = []
    _total(stockout)
    return kind
