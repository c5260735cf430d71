"""membench.units: the one parser and printer of byte sizes."""

import pytest

from membench.units import GiB, KiB, MiB, axis_unit, format_bytes, mib, parse_bytes


@pytest.mark.parametrize(("text", "expected"), [
    ("24GiB", 24 * GiB), ("80GB", 80 * 10**9), ("8e9", 8 * 10**9), ("1.5 KiB", 1536), (1024, 1024),
    ("512", 512), ("512B", 512), ("4kib", 4 * KiB), ("0", 0), (" 2 MiB ", 2 * MiB), ("1t", 10**12),
])
def test_parse_bytes_reads_decimal_and_binary_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["24QB", "-1GB", "lots", "", "GiB", True, -5, "1.2.3MB"])
def test_parse_bytes_refuses_what_is_not_a_size(text):
    assert parse_bytes(text) is None


def test_format_bytes_and_mib():
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * GiB) == "3.00 GiB" and format_bytes(None) == "-"
    assert mib(1536 * MiB) == "1,536.0" and mib(3 * MiB, 0) == "3" and mib(None) == "-"


def test_axis_unit_keeps_values_at_least_two_units():
    assert axis_unit(3 * GiB) == ("GiB", float(GiB))
    assert axis_unit(1.5 * GiB) == ("MiB", float(MiB))
    assert axis_unit(100) == ("B", 1.0) and axis_unit(0) == ("B", 1.0)
