"""Writing tick batches so that a Redis which rolls back is noticed: the fenced XADD.

Each tick stream has a mark (``keys.ticks_mark``), the trade id of the last trade written to it,
moved by the same script that appends a batch. A batch goes out only if the mark is still the one
its writer set last (``"*"``: not checked, a writer that never saw one); otherwise nothing is
written and the script answers the mark it found. Redis that lost acknowledged writes (killed
with the last second of its append-only file unwritten, a failover to a replica that lagged)
lost the mark's moves with them, so a lower mark is a rollback, and the writer repairs it from
what it remembers (:class:`unistream_ingest.core.WrittenTicks`). The mark and the stream share a
hash tag: the script is one slot on a Redis Cluster.
"""

from __future__ import annotations

from typing import Any

from unistream_common import codec, keys
from unistream_common.packets import TickBatch

# Written ticks remembered for a Redis that rolls back: AOF everysec loses at most about 2 s.
ROLLBACK_KEEP_MS = 10_000

FENCED_XADD = """
local mark = redis.call('GET', KEYS[2])
if ARGV[1] ~= '*' and mark ~= ARGV[1] then
  return {0, mark or ''}
end
local args = {'XADD', KEYS[1], 'MINID', '~', ARGV[3], '*'}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('SET', KEYS[2], ARGV[2])
return {1, id}
"""


def queue_batch(client: Any, batch: TickBatch, expected: str, min_id: int) -> Any:
    """Send (or queue, on a pipeline) the fenced XADD of ``batch``; its mark becomes the last trade id.

    EVAL with the script's text rather than EVALSHA: Redis caches the compiled script either way,
    a restarted Redis needs nothing loaded first, and redis-py's registered scripts would cost a
    SCRIPT EXISTS round trip before every pipeline."""
    fields = [part for pair in codec.encode(batch).items() for part in pair]
    return client.eval(
        FENCED_XADD, 2, keys.ticks(batch.symbol), keys.ticks_mark(batch.symbol),
        expected, str(batch.ticks[-1].trade_id), min_id, *fields,
    )  # fmt: skip


def written(reply: Any) -> tuple[bool, str | int | None]:
    """A fenced XADD's reply as (written, entry id) or (False, the mark found: int or None)."""
    ok, value = reply
    text = value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
    if int(ok):
        return True, text
    return False, int(text) if text else None
