"""Consumer groups as Redis reports them (XINFO GROUPS, XINFO STREAM), judged.

The one rule for "trimming removed entries a group had not read": the features service checks
its own input with it, the dashboard and ``unistream status`` show it.
"""

from __future__ import annotations

from unistream_common.redisio import id_pair


def group_overrun(
    last_delivered_id: str,
    entries_read: int | None,
    length: int,
    first_id: str | None,
    last_generated_id: str,
    entries_added: int | None,
) -> bool:
    """True when trimming removed entries this group had not read yet (they are lost to it).

    The sign is a last-delivered-id below the stream's first entry while entries were trimmed.
    Redis >= 7.0 counts entries ever added, so ``entries_added - length`` entries are gone; if the
    group has read at least that many, what went was already read (ids are sparse, so the id
    comparison alone would cry wolf). Redis 6.2 has no counters: a group that has read something
    and now sits below the first entry is taken as overrun; one that never read (0-0) cannot be
    judged until the stream is empty.
    """
    delivered = id_pair(last_delivered_id)
    if first_id is None:  # empty stream: everything after last-delivered was removed unread
        return delivered < id_pair(last_generated_id)
    if delivered >= id_pair(first_id):
        return False
    if entries_added is not None:
        removed = entries_added - length
        if removed <= 0:
            return False
        read = entries_read if entries_read is not None else (0 if delivered == (0, 0) else None)
        return read is None or read < removed
    return delivered != (0, 0)
