"""What a hostile file name may not do to the reader: drive a terminal, or run in a spreadsheet.

- `shown(text)`: text for people with every control character escaped, as `ls -b` does (`\\x1b`,
  `\\n`, a non-UTF-8 byte as `\\x9b`, the bidirectional overrides as `\\u202e`). Machine formats
  never use it: their own escaping keeps names exact.
- `csv_cell(value)`: a cell holding a name that starts like a formula (`=`, `+`, `-`, `@`, tab,
  carriage return: OWASP) gets a leading `'`; `--csv-raw` turns it off.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls, DEL, C1 controls; U+2028/2029 (line and paragraph separators); the bidirectional
# embeddings, overrides and isolates; lone surrogates (how Python holds a non-UTF-8 name's bytes).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# What a spreadsheet treats as the start of a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: Any) -> str:
    """`text` (a name, or a whole message) as it may reach a person's screen."""
    return _CONTROL.sub(_escape, str(text))


def csv_cell(value: Any, raw: bool = False) -> Any:
    """`value` for a CSV cell: a string starting like a formula gets a leading `'` unless `raw`."""
    if not raw and isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
