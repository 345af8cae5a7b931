"""The build really produced (or, when asked, really avoided) the compiled hot path.

``make test`` runs the suite once with ``RAFTLIB_EXPECT_COMPILED=1`` (the
extension must be in use) and once with ``RAFTLIB_PURE=1`` (it must not be).
"""

import os

import pytest

import raftlib._accel as accel
from raftlib import _pycore

PUBLIC = [
    "Entry",
    "Log",
    "QuorumTracker",
    "committed_index",
    "joint_committed_index",
    "vote_result",
    "joint_vote_result",
    "LogIndexError",
    "ENTRY_NORMAL",
    "ENTRY_CONF_CHANGE",
    "ENTRY_OVERHEAD",
    "VOTE_PENDING",
    "VOTE_LOST",
    "VOTE_WON",
    "MAX_INDEX",
    "encode_message",
    "decode_message",
    "scan_frames",
    "group_tag",
    "encode_group_frame",
    "decode_group_frame",
    "scan_group_frames",
]


@pytest.mark.skipif(os.environ.get("RAFTLIB_EXPECT_COMPILED") != "1", reason="RAFTLIB_EXPECT_COMPILED!=1")
def test_compiled_core_is_in_use():
    assert accel.COMPILED, "RAFTLIB_EXPECT_COMPILED=1 but raftlib._core could not be imported"
    assert accel.impl.__name__ == "raftlib._core"
    assert accel.impl.__file__.endswith((".so", ".pyd"))


@pytest.mark.skipif(os.environ.get("RAFTLIB_PURE") != "1", reason="RAFTLIB_PURE!=1")
def test_pure_core_is_forced():
    assert not accel.COMPILED
    assert accel.impl is _pycore


@pytest.mark.parametrize("name", PUBLIC)
def test_accel_reexports_the_selected_implementation(name):
    assert getattr(accel, name) is getattr(accel.impl, name)


def test_constants_are_the_documented_values():
    assert (accel.ENTRY_NORMAL, accel.ENTRY_CONF_CHANGE, accel.ENTRY_OVERHEAD) == (0, 1, 24)
    assert (accel.VOTE_PENDING, accel.VOTE_LOST, accel.VOTE_WON) == (0, 1, 2)
    assert accel.MAX_INDEX == 2**63 - 1
    assert issubclass(accel.LogIndexError, IndexError)


def test_both_modules_have_the_same_public_names():
    try:
        from raftlib import _core
    except ImportError:
        pytest.skip("raftlib._core is not built")
    for name in PUBLIC:
        assert hasattr(_core, name), name
        if name.isupper():
            assert getattr(_core, name) == getattr(_pycore, name), name
