"""Group codes: equal ids get equal codes, numbered by the ids' text, whatever their order."""

import numpy as np

from aukit.utils.groups import group_codes


def test_codes_follow_the_ids_and_not_their_order():
    assert group_codes(["F002", "F001", "F002", ("F001",)]).tolist() == [2, 1, 2, 0]
    assert np.array_equal(group_codes([3, 1, 3]), group_codes(["3", "1", "3"]))
    assert group_codes(["b", "a"]).tolist() == [1, 0] and group_codes(["a", "b"]).tolist() == [0, 1]
