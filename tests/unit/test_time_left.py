"""The "(… left)" in a held call's progress message never says more time is left than there is."""

from proxy.approvals import time_left


def test_time_left_never_overstates() -> None:
    assert time_left(85) == "85s"  # was "2m"
    assert time_left(119.9) == "119s"
    assert time_left(120) == "2m"
    assert time_left(599) == "9m"
    assert time_left(3600 + 59 * 60 + 59) == "1h59m"
    assert time_left(-3) == "0s"
