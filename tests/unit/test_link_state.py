"""The direct link's state machine (core/peer.py): the table is the whole behaviour."""

from __future__ import annotations

import pytest

from helpers import Authority
from naas.core.peer import LINK_TRANSITIONS, LinkEvent, LinkState, Peer


def _peer() -> Peer:
    return Peer(Authority().identity("bravo", 2).certificate)


def test_a_link_comes_up_goes_down_and_idles_as_the_table_says() -> None:
    peer = _peer()
    assert (peer.link, peer.direct_up) == (LinkState.DOWN, False)
    assert peer.link_event(LinkEvent.PROBE_ANSWERED) and peer.direct_up
    assert not peer.link_event(LinkEvent.PROBE_ANSWERED), "every answer keeps it up: no change"
    assert peer.link_event(LinkEvent.PROBES_MISSED) and (peer.link, peer.direct_up) == (LinkState.DOWN, False)
    peer.link_event(LinkEvent.PROBE_ANSWERED)
    assert peer.link_event(LinkEvent.WENT_IDLE) and (peer.link, peer.direct_up) == (LinkState.IDLE, False)
    assert peer.link_event(LinkEvent.PROBE_ANSWERED) and peer.link is LinkState.UP
    peer.link_event(LinkEvent.REMOVED)
    assert peer.link is LinkState.DOWN


@pytest.mark.parametrize("state", list(LinkState))
@pytest.mark.parametrize("event", list(LinkEvent))
def test_every_pair_has_a_transition_or_is_refused(state: LinkState, event: LinkEvent) -> None:
    peer = _peer()
    peer.link = state
    wanted = LINK_TRANSITIONS.get((state, event))
    if wanted is None:
        with pytest.raises(ValueError, match=f"no transition from {state.value} on {event.value}"):
            peer.link_event(event)
        assert peer.link is state, "a refused event changes nothing"
    else:
        peer.link_event(event)
        assert peer.link is wanted and peer.direct_up == (wanted is LinkState.UP)
