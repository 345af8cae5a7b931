"""Selects the hot-path implementation: the compiled ``raftlib._core`` or the pure ``raftlib._pycore``.

* ``RAFTLIB_PURE=1`` in the environment forces the pure-Python reference
  implementation (the test-suite runs once this way).
* Otherwise the Cython extension is used when it is importable, with a silent
  fall-back to the pure module when it is not built.

Everything else in raftlib imports the hot path from here, never from
``_core``/``_pycore`` directly.  ``COMPILED`` tells which one was picked and
``impl`` is the module itself.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "COMPILED",
    "ENTRY_CONF_CHANGE",
    "ENTRY_NORMAL",
    "ENTRY_OVERHEAD",
    "MAX_INDEX",
    "VOTE_LOST",
    "VOTE_PENDING",
    "VOTE_WON",
    "Entry",
    "Log",
    "LogIndexError",
    "QuorumTracker",
    "committed_index",
    "decode_group_frame",
    "decode_message",
    "encode_group_frame",
    "encode_message",
    "group_tag",
    "impl",
    "joint_committed_index",
    "joint_vote_result",
    "scan_frames",
    "scan_group_frames",
    "vote_result",
]

impl: ModuleType
COMPILED: bool

if os.environ.get("RAFTLIB_PURE") == "1":
    from raftlib import _pycore as impl

    COMPILED = False
else:
    try:
        from raftlib import _core as impl
    except ImportError:
        from raftlib import _pycore as impl

        COMPILED = False
    else:
        COMPILED = True

if TYPE_CHECKING:
    # Both modules have the same interface (raftlib/_core.pyi mirrors _pycore); type-check
    # against the reference implementation.
    from raftlib._pycore import (
        ENTRY_CONF_CHANGE,
        ENTRY_NORMAL,
        ENTRY_OVERHEAD,
        MAX_INDEX,
        VOTE_LOST,
        VOTE_PENDING,
        VOTE_WON,
        Entry,
        Log,
        LogIndexError,
        QuorumTracker,
        committed_index,
        decode_group_frame,
        decode_message,
        encode_group_frame,
        encode_message,
        group_tag,
        joint_committed_index,
        joint_vote_result,
        scan_frames,
        scan_group_frames,
        vote_result,
    )
else:
    ENTRY_NORMAL = impl.ENTRY_NORMAL
    ENTRY_CONF_CHANGE = impl.ENTRY_CONF_CHANGE
    ENTRY_OVERHEAD = impl.ENTRY_OVERHEAD
    MAX_INDEX = impl.MAX_INDEX
    VOTE_PENDING = impl.VOTE_PENDING
    VOTE_LOST = impl.VOTE_LOST
    VOTE_WON = impl.VOTE_WON
    Entry = impl.Entry
    Log = impl.Log
    LogIndexError = impl.LogIndexError
    QuorumTracker = impl.QuorumTracker
    committed_index = impl.committed_index
    joint_committed_index = impl.joint_committed_index
    vote_result = impl.vote_result
    joint_vote_result = impl.joint_vote_result
    encode_message = impl.encode_message
    decode_message = impl.decode_message
    scan_frames = impl.scan_frames
    group_tag = impl.group_tag
    encode_group_frame = impl.encode_group_frame
    decode_group_frame = impl.decode_group_frame
    scan_group_frames = impl.scan_group_frames
