"""Unit tests of the quorum arithmetic and QuorumTracker, run against both modules."""

import pytest

from raftlib import _pycore

try:
    from raftlib import _core
except ImportError:  # not built: the compiled parameter is skipped
    _core = None

MODULES = [
    pytest.param(_pycore, id="pure"),
    pytest.param(
        _core,
        id="compiled",
        marks=pytest.mark.skipif(_core is None, reason="raftlib._core is not built (run `make build`)"),
    ),
]


@pytest.fixture(params=MODULES)
def m(request):
    return request.param


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        ([], 2**63 - 1),
        ([7], 7),
        ([5, 3], 3),
        ([5, 3, 1], 3),
        ([1, 5, 3], 3),
        ([4, 4, 1, 1], 1),
        ([9, 8, 7, 1, 1], 7),
        ([2, 2, 2, 2, 2, 0, 0], 2),
        (list(range(100)), 49),  # beyond the small-sort buffer
    ],
)
def test_committed_index(m, matches, expected):
    assert m.committed_index(matches) == expected
    assert m.committed_index(tuple(matches)) == expected


def test_joint_committed_index(m):
    assert m.joint_committed_index([5, 3, 1], []) == 3
    assert m.joint_committed_index([5, 3, 1], [2, 2, 9]) == 2
    assert m.joint_committed_index([], []) == m.MAX_INDEX
    assert m.joint_committed_index([], [4]) == 4


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ([], 2),
        ([-1], 0),
        ([1], 2),
        ([0], 1),
        ([1, -1, -1], 0),
        ([1, 1, -1], 2),
        ([0, 0, -1], 1),
        ([1, 0, -1], 0),
        ([1, 1, 0, 0], 1),
        ([1, 1, 0, -1], 0),
        ([1, 1, 1, 0], 2),
    ],
)
def test_vote_result(m, votes, expected):
    assert m.vote_result(votes) == expected


def test_vote_result_rejects_bad_votes(m):
    with pytest.raises(ValueError):
        m.vote_result([1, 2])


def test_joint_vote_result(m):
    W, L, P = m.VOTE_WON, m.VOTE_LOST, m.VOTE_PENDING
    assert m.joint_vote_result([1, 1, 0], []) == W
    assert m.joint_vote_result([1, 1, 0], [1, -1, -1]) == P
    assert m.joint_vote_result([1, 1, 0], [0, 0, -1]) == L
    assert m.joint_vote_result([-1, -1, -1], [0, 0, 1]) == L
    assert m.joint_vote_result([1, 1], [1]) == W


def test_tracker_simple_config(m):
    t = m.QuorumTracker(3)
    t.set_config([0, 1, 2])
    assert t.n_slots == 3 and t.committed() == 0
    assert t.set_match_and_commit(0, 10) == 0
    assert t.set_match_and_commit(1, 7) == 7
    t.set_match(2, 9)
    assert t.match(2) == 9 and t.committed() == 9
    t.reset_matches()
    assert t.committed() == 0 and t.match(0) == 0


def test_tracker_joint_config_and_learners(m):
    t = m.QuorumTracker(2)
    t.set_config([0, 1, 2], [2, 3, 4])  # grows to 5 slots; slot 2 is in both
    assert t.n_slots == 5
    for slot, idx in enumerate([10, 10, 5, 1, 1]):
        t.set_match(slot, idx)
    assert t.committed() == 1  # the outgoing majority is behind
    t.set_match(3, 8)
    assert t.committed() == 5
    t.set_config([0, 1, 2])  # leave the joint configuration; slots 3, 4 become learners
    assert t.committed() == 10
    t.set_config([0], [])
    t.set_match(4, 0)
    assert t.committed() == 10


def test_tracker_empty_config(m):
    t = m.QuorumTracker(0)
    assert t.committed() == m.MAX_INDEX
    assert t.vote_result() == m.VOTE_WON
    assert t.votes() == (0, 0)


def test_tracker_votes(m):
    t = m.QuorumTracker(5)
    t.set_config([0, 1, 2])
    assert t.vote_result() == m.VOTE_PENDING
    t.record_vote(0, True)
    t.record_vote(3, True)  # a learner: recorded, never counted
    assert t.votes() == (1, 0) and t.vote_result() == m.VOTE_PENDING
    t.record_vote(1, False)
    t.record_vote(1, True)  # the first answer wins
    assert t.votes() == (1, 1) and t.vote_result() == m.VOTE_PENDING
    t.record_vote(2, True)
    assert t.votes() == (2, 1) and t.vote_result() == m.VOTE_WON
    t.set_config([0, 1, 2], [1, 3, 4])
    assert t.votes() == (3, 1) and t.vote_result() == m.VOTE_PENDING
    t.record_vote(4, False)
    assert t.vote_result() == m.VOTE_LOST
    t.reset_votes()
    assert t.votes() == (0, 0) and t.vote_result() == m.VOTE_PENDING


def test_tracker_bad_input(m):
    with pytest.raises(ValueError):
        m.QuorumTracker(-1)
    t = m.QuorumTracker(3)
    t.set_config([0, 1, 2])
    for call in (
        lambda: t.set_match(-1, 1),
        lambda: t.set_match(3, 1),
        lambda: t.match(5),
        lambda: t.set_match_and_commit(3, 1),
        lambda: t.record_vote(-2, True),
    ):
        with pytest.raises(IndexError):
            call()
    with pytest.raises(ValueError):
        t.set_match(0, -1)
    with pytest.raises(ValueError):
        t.set_match_and_commit(0, -1)
    with pytest.raises(ValueError):
        t.set_config([0, -1])
    with pytest.raises(ValueError):
        t.set_config([0, 0, 1])
    with pytest.raises(ValueError):
        t.set_config([0], [2, 2])
    assert t.committed() == 0  # the configuration is unchanged after a rejected set_config
