import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.envelope import decode_payload, encode_payload, event_id


def test_event_id_is_fingerprint_and_offset() -> None:
    assert event_id("ab12", 0) == "ab12:0"
    assert event_id("ab12", 1234567) == "ab12:1234567"


@given(
    fingerprint=st.text(alphabet="0123456789abcdef", min_size=1, max_size=64),
    offset=st.integers(min_value=0, max_value=2**63),
    line=st.binary(max_size=2048),
)
def test_round_trip_is_byte_exact(fingerprint: str, offset: int, line: bytes) -> None:
    eid = event_id(fingerprint, offset)
    assert decode_payload(encode_payload(eid, line)) == (eid, line)


def test_invalid_utf8_and_tabs_pass_untouched() -> None:
    line = b'1.2.3.4 - - "\xff\xfe\tGET /\t" 200'
    assert decode_payload(encode_payload("f:9", line)) == ("f:9", line)


def test_payload_without_separator_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="no tab"):
        decode_payload(b"1.2.3.4 - - no event id here")


def test_event_id_that_is_not_utf8_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        decode_payload(b"\xff:1\tline")
