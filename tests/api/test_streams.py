"""StreamRoom: approval streams' own bound, apart from the unary RPCs' max_concurrent_rpcs."""

from __future__ import annotations

import pytest

from tollgate.api import StreamRoom
from tollgate.api._errors import TooLarge


def test_a_stream_past_the_bound_is_refused_naming_the_key_and_the_room_comes_back() -> None:
    room = StreamRoom(2)
    with room.hold("WaitForApproval"), room.hold("WatchApproval"):
        assert room.open == 2
        with pytest.raises(TooLarge, match=r"WaitForApproval: 2 approval streams are open, .*max_concurrent_streams"):
            with room.hold("WaitForApproval"):
                pass
        assert room.open == 2
    assert room.open == 0
    with room.hold("WaitForApproval"):
        assert room.open == 1


def test_a_stream_that_fails_gives_its_room_back() -> None:
    room = StreamRoom(1)
    with pytest.raises(RuntimeError), room.hold("WatchApproval"):
        raise RuntimeError("the state store went away")
    assert room.open == 0
