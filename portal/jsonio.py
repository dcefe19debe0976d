"""JSON responses that write Decimals as exact JSON numbers.

Flask's default provider turns a Decimal into a string; quantities such as 12.5
tokens or a percentage of 80.3 are numbers in the API, and converting them through
float could change their digits. simplejson writes a Decimal's own digits.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import simplejson
from flask.json.provider import DefaultJSONProvider


class DecimalJSONProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("sort_keys", self.sort_keys)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        return simplejson.dumps(obj, use_decimal=True, default=_default, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return simplejson.loads(s, use_decimal=True, **kwargs)


def _default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    return DefaultJSONProvider.default(obj)
