"""Binance spot, the first live venue: one folder per venue, one module per job.

- :mod:`~unistream_ingest.binance.parsing`: endpoints, symbol mapping and the pure parsers of
  websocket, REST and archive values (tested by replaying recorded messages);
- :mod:`~unistream_ingest.binance.websocket`: the combined-stream connection (connect, rotate,
  replace silent connections) and :class:`~unistream_ingest.binance.websocket.BinanceLiveSource`;
- :mod:`~unistream_ingest.binance.rest`: REST backfill within the request-weight budget, and the
  reachability probe.

Ordering, duplicates and gaps by trade id are venue-neutral: :mod:`unistream_ingest.sequencer`.
"""
