"""A trace's stored meta is decoded exactly as the standard library decodes it, whichever
parser takes it: values, types and the error for text that is not JSON."""

from __future__ import annotations

import json

import pytest

from manta_lib.context.trace_rows import decode_meta as _decode_meta

CASES = [
    "{}",
    '{"temperature":1.0,"seed":1995866674,"group_id":"run/0/dp_5","rollout_index":0}',
    '{"a":[1,2,{"c":null}],"d":true,"e":false}',
    '{"big":123456789012345678901234567890,"neg":-12}',
    '{"f":0.1,"g":1e300,"h":-0.0,"i":5e-324,"j":1.0}',
    '{"lone":"\\ud800"}',
    '{"n":NaN,"x":Infinity,"y":-Infinity}',
    '{"a":1,"a":2}',
    '{"u":"h\u00e9llo \\u2713","k":"\\n\\t\\\\"}',
    '{"over":1e400}',
]


@pytest.mark.parametrize("text", CASES)
def test_meta_decodes_like_the_standard_library(text: str) -> None:
    decoded, expected = _decode_meta(text), json.loads(text)
    assert repr(decoded) == repr(expected)  # repr: nan != nan, and 1 == 1.0 would hide types


@pytest.mark.parametrize("text", ['{"a":', "{'a': 1}", '{"a":1} trailing'])
def test_text_that_is_not_json_raises_the_standard_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        _decode_meta(text)
