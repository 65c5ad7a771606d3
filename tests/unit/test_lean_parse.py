"""What the lean path leaves to the SDK when reading a request: integers orjson cannot keep exactly."""

from __future__ import annotations

import orjson
import pytest

from proxy.edge.fastpath import _has_big_number, _request


def call(arguments: str) -> bytes:
    return (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":'
        + arguments.encode()
        + b"}}"
    )


@pytest.mark.parametrize(
    ("arguments", "big"),
    [
        ('{"n": 1234567890123456789}', True),  # 19 digits: may be beyond 64 bits
        ('{"n": -99999999999999999999}', True),
        ('{"n": 123456789012345678}', False),  # 18 digits always fit
        ('{"s": "order 1234567890123456789"}', True),  # in a string: the SDK path takes it too
        ('{"a": [123456789, 1234567890], "b": 1.5e300}', False),
        ('{"text": "' + "x" * 100_000 + '"}', False),
        ('{"text": "' + "x" * 100_000 + '", "n": 18446744073709551616}', True),
    ],
)
def test_nineteen_digits_in_a_row_send_the_request_to_the_sdk(arguments: str, big: bool) -> None:
    body = call(arguments)
    assert _has_big_number(body) is big
    message = _request(orjson.loads(body), body)
    assert (message is None) is big
    if not big:  # what the lean path forwards is exactly what was sent
        assert message is not None and message["params"]["arguments"] == orjson.loads(arguments)
