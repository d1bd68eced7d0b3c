"""The stockout as `wdt.stockout.order.query` returns it: strings become Decimal, None and aware
Beijing datetimes; fields the table does not list are kept (docs/design.md, "WDT's stockout model")."""
from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from shared.core.timeutil import format_wire, parse_wire

# A number as WDT writes one: ASCII digits with at most one point (and a minus), nothing else. The
# shape is checked on the text before Decimal ever sees it: `1e999999999` would otherwise become a
# gigabyte of digits on its way to BIP (docs/design.md, "Quantities exactly as written").
_PLAIN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
MAX_NUMBER_CHARS = 40
MAX_SIGNIFICANT_DIGITS = 28  # Decimal's default precision: sums and comparisons stay exact


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f"expected a number as a string, got {type(value).__name__} {bounded(value)}")
    if isinstance(value, Decimal):  # built by our own code (tests, a copy): back to its text
        if not value.is_finite() or len(value.as_tuple().digits) > MAX_SIGNIFICANT_DIGITS:
            raise ValueError(f"not a plain decimal, got {bounded(value)}")
        value = format(value, "f")
    if isinstance(value, int) and value.bit_length() > 128:  # too long to be a quantity, too long for str()
        raise ValueError(_not_plain(value))
    text = value if isinstance(value, str) else repr(value)  # an int or float from a Python caller
    if len(text) > 2 * MAX_NUMBER_CHARS:  # not even worth stripping
        raise ValueError(_not_plain(text))
    text = text.strip()
    if not text:
        return None
    if len(text) > MAX_NUMBER_CHARS or not _PLAIN.fullmatch(text):
        raise ValueError(_not_plain(text))
    if len(text.lstrip("-").replace(".", "").lstrip("0")) > MAX_SIGNIFICANT_DIGITS:
        raise ValueError(_not_plain(text))
    return Decimal(text)


def _not_plain(text: str | int) -> str:
    return (f"not a plain decimal (ASCII digits, at most one point, {MAX_NUMBER_CHARS} characters and "
            f"{MAX_SIGNIFICANT_DIGITS} significant digits at most), got {bounded(text)}")


def bounded(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to about `limit` characters with its length said: WDT's text is untrusted."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    text = repr(value)
    return text if len(text) <= 2 * limit else text[: 2 * limit] + "…"


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected 'yyyy-MM-dd HH:mm:ss', got {type(value).__name__} {value!r}")
    try:
        return parse_wire(value)
    except ValueError:
        raise ValueError(f"expected 'yyyy-MM-dd HH:mm:ss', got {value!r}") from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


# Serialised back to WDT's own string forms so a stockout round-trips through JSON unchanged.
Num = Annotated[
    Decimal | None, BeforeValidator(_decimal), PlainSerializer(lambda v: "" if v is None else str(v), return_type=str)
]
Time = Annotated[
    datetime | None,
    BeforeValidator(_time),
    PlainSerializer(lambda v: "0000-00-00 00:00:00" if v is None else format_wire(v), return_type=str),
]
Text = Annotated[str, BeforeValidator(_text)]


class _WdtModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Position(_WdtModel):
    position_id: Text = ""
    position_no: Text = ""
    position_goods_count: Num = None
    stockout_order_detail_id: Text = ""
    rec_id: Text = ""
    stock_spec_detail_id: Text = ""
    stockin_detail_id: Text = ""
    batch_id: Text = ""
    batch_no: Text = ""
    cost_price: Num = None
    modified: Time = None
    v_stock_spec_detail_id: Text = ""
    expire_date: Time = None
    created: Time = None


class StockoutDetail(_WdtModel):
    stockout_id: Text = ""
    rec_id: Text = ""
    spec_no: Text = ""
    goods_count: Num = None
    sell_price: Num = None
    brand_no: Text = ""
    brand_name: Text = ""
    goods_name: Text = ""
    goods_no: Text = ""
    spec_name: Text = ""
    spec_code: Text = ""
    cost_price: Num = None
    total_amount: Num = None
    weight: Num = None
    remark: Text = ""
    goods_unit: Text = ""
    batch_no: Text = ""
    batch_remark: Text = ""
    expire_date: Time = None
    position_list: list[Position] = Field(default_factory=list)


class Stockout(_WdtModel):
    stockout_id: Annotated[str, BeforeValidator(_text), Field(min_length=1, max_length=40, pattern=r"^\S+$")]
    order_no: Text = ""
    src_order_no: Text = ""
    warehouse_no: Text = ""
    status: Text = ""
    consign_time: Time = None
    order_type: Text = ""
    order_type_name: Text = ""
    subtype: Text = ""
    stockout_reason: Text = ""
    goods_count: Num = None
    goods_total_amount: Num = None
    goods_total_cost: Num = None
    post_fee: Num = None
    logistics_no: Text = ""
    package_fee: Num = None
    receiver_name: Text = ""
    receiver_country: Text = ""
    receiver_province: Text = ""
    receiver_city: Text = ""
    receiver_district: Text = ""
    receiver_address: Text = ""
    receiver_mobile: Text = ""
    receiver_telno: Text = ""
    receiver_zip: Text = ""
    weight: Num = None
    remark: Text = ""
    outer_no: Text = ""
    operator_name: Text = ""
    logistics_type: Text = ""
    logistics_code: Text = ""
    logistics_name: Text = ""
    modified: Time = None
    details_list: list[StockoutDetail] = Field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        """Back to WDT's own JSON shape (strings), for messages and dead letters."""
        return self.model_dump(mode="json", by_alias=True)
