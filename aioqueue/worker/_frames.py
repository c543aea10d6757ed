"""The pipe protocol between a supervisor and its children: length-prefixed frames."""

from __future__ import annotations

import struct

HEADER = struct.Struct(">I")  # frame length, big-endian
READY = b"ready"  # a child's first frame, once it has imported the tasks
