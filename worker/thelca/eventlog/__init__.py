"""The JSON-lines event log: the audit trail, one compact JSON object per line.

Writing appends whole lines and fsyncs before anything is acknowledged; a
line that a crash left half-written (a torn tail) is moved aside into a file
of its own on the next start, never silently dropped. Reading streams the
file line by line, reporting torn and unreadable lines instead of failing.

Segments: with a size limit the writer renames the live file `NAME` to the
next numbered segment `NAME.000001`, `NAME.000002`, ... (six digits or more,
ordered by number) and starts a fresh `NAME`. The whole log is the segments
in order, then the live file; `LogSnapshot` (and `read_all`) is the one way
restore, verify and replay read it.

The modules: `format` (one line: encode, decode, event id), `segments` (the
files of a log), `reader` (blocks, lines, snapshots), `index` (a sparse index
by time and type, for readers that seek: replay), `writer` (append, rotate,
remembered ids), `torn` (healing a torn tail at start).
"""

from thelca.eventlog.format import TORN, LogLine, to_line
from thelca.eventlog.index import Chunk, LogIndex, line_time, read_chunks
from thelca.eventlog.reader import Block, LogSnapshot, lines_of, read_all, read_log
from thelca.eventlog.segments import log_segments, segment_path
from thelca.eventlog.torn import heal_torn_tail
from thelca.eventlog.writer import EventLogWriter

__all__ = [
    "TORN",
    "Block",
    "Chunk",
    "EventLogWriter",
    "LogIndex",
    "LogLine",
    "LogSnapshot",
    "heal_torn_tail",
    "line_time",
    "lines_of",
    "log_segments",
    "read_all",
    "read_chunks",
    "read_log",
    "segment_path",
    "to_line",
]
