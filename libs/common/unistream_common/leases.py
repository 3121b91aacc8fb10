"""Symbol leases: how replicas of one service split the symbols and take over a dead one's.

A symbol's lease is a key (``owner_key(symbol)``) holding ``<consumer>:<token>`` and expiring
after ``lease_ms`` unless renewed; beside it, in the same hash slot, a fence key
(``fence_key(symbol)``) that every commit of the holder checks (a
:class:`~unistream_common.consumer.SequencedFence`): taking a lease sets the fence to the taker's
``<token>#0``, so a former holder that wakes up cannot commit for the symbol any more. The fence
is a key of its own so that renewing the lease never aborts a long commit's WATCH.

Live replicas heartbeat in a sorted set (``members_key``: ``<consumer>|<symbols>`` -> expiry,
ms; ``<symbols>`` a fingerprint of the replica's configured symbols); each takes free symbols up to
its fair share (symbols / live members configured with the same symbols, rounded up) and hands one
back when it holds more, so the symbols spread over the replicas and a dead one's are taken once
its leases run out. A replica configured with other symbols (a stray process, a configuration
being rolled out) does not count: it would lower everyone's share and leave symbols with nobody
(seen: a leftover aggregator of two other symbols left 2 of 10 symbols without bars). The
aggregator and the features service both split their symbols this way.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from unistream_common.redisio import REDIS_ERRORS, s

# Renew (KEYS[1] lease, KEYS[2] fence; ARGV[1] token, ARGV[2] ms): 1 when renewed, also when the
# lease ran out and the fence shows nobody took the symbol since (this holder's state is still
# the truth), else who holds the lease now (false: nobody, but another took it in between).
RENEW = (
    "local v = redis.call('GET', KEYS[1]) "
    "if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end "
    "local f = redis.call('GET', KEYS[2]) "
    "if v == false and f and string.sub(f, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '#' then "
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return v"
)
# Take: when the lease is free or held by a former self (ARGV[3]: this consumer's prefix).
TAKE = (
    "local v = redis.call('GET', KEYS[1]) "
    "if v == false or string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then "
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) redis.call('SET', KEYS[2], ARGV[1] .. '#0') return 1 end return 0"
)
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def fair_share(symbols: int, members: int) -> int:
    """Symbols one replica may hold: ``symbols / members`` rounded up (all of them alone)."""
    return math.ceil(symbols / max(1, members))


def symbols_fingerprint(symbols: Iterable[str]) -> str:
    """A short name of a set of symbols (order and repeats do not matter)."""
    return hashlib.sha256(",".join(sorted(set(symbols))).encode()).hexdigest()[:12]


def new_token(consumer: str) -> str:
    """``<consumer>:<random>``: the consumer part lets a restarted replica take back its own leases."""
    return f"{consumer}:{secrets.token_hex(6)}"


class SymbolLeases:
    """One replica's leases: take, renew (from a task of its own), hand back, heartbeat.

    ``valid_until`` holds, per held symbol, the monotonic time its lease runs out at the latest;
    ``lost`` the held symbols a renewal found taken (symbol -> the holder now, None: nobody).
    The caller decides what holding means; this class only talks to Redis.
    """

    def __init__(
        self,
        consumer: str,
        lease_ms: int,
        owner_key: Callable[[str], str],
        fence_key: Callable[[str], str],
        members_key: str,
        symbols: Sequence[str],
    ) -> None:
        self.consumer = consumer
        self.fingerprint = symbols_fingerprint(symbols)
        self.member = f"{consumer}|{self.fingerprint}"
        self.lease_ms = lease_ms
        self.owner_key = owner_key
        self.fence_key = fence_key
        self.members_key = members_key
        self.token = new_token(consumer)
        self.valid_until: dict[str, float] = {}
        self.lost: dict[str, str | None] = {}

    def restart(self) -> None:
        """A fresh token and nothing held (a holder starting over: its next takes set ``token#0``)."""
        self.token = new_token(self.consumer)
        self.valid_until.clear()
        self.lost.clear()

    @property
    def held(self) -> list[str]:
        return list(self.valid_until)

    async def heartbeat(self, cmd: Any, now_ms: int) -> int:
        """Say this replica lives (until ``now_ms + lease_ms``), drop expired members; the live
        members configured with the same symbols (this one included)."""
        pipe = cmd.pipeline(transaction=False)
        pipe.zadd(self.members_key, {self.member: now_ms + self.lease_ms})
        pipe.zremrangebyscore(self.members_key, "-inf", now_ms)
        pipe.zrange(self.members_key, 0, -1)
        replies = await pipe.execute()
        alike = [m for m in map(s, replies[2]) if m.rpartition("|")[2] == self.fingerprint]
        return max(1, len(alike))

    async def members(self, cmd: Any, now_ms: int) -> list[str]:
        """Live members' consumer names, whatever symbols they are configured with."""
        return [s(m).rpartition("|")[0] or s(m) for m in await cmd.zrangebyscore(self.members_key, now_ms, "+inf")]

    async def take(self, cmd: Any, symbol: str) -> bool:
        """Take ``symbol``'s lease when it is free or a former self's (its fence becomes ``token#0``)."""
        sent = time.monotonic()
        taken = await cmd.eval(
            TAKE, 2, self.owner_key(symbol), self.fence_key(symbol), self.token, self.lease_ms, self.consumer + ":"
        )
        if taken:
            self.valid_until[symbol] = sent + self.lease_ms / 1000
            self.lost.pop(symbol, None)
        return bool(taken)

    async def renew(self, cmd: Any, symbols: Iterable[str] | None = None) -> bool:
        """Renew the held leases (or ``symbols``) in one pipeline; False when Redis did not answer.

        A lease found taken goes to ``lost`` (the caller gives the symbol up); one renewed moves
        its ``valid_until``.
        """
        held = list(self.valid_until) if symbols is None else list(symbols)
        if not held:
            return True
        pipe = cmd.pipeline(transaction=False)
        for symbol in held:
            pipe.eval(RENEW, 2, self.owner_key(symbol), self.fence_key(symbol), self.token, self.lease_ms)
        sent = time.monotonic()
        try:
            replies = await pipe.execute()
        except REDIS_ERRORS:
            return False  # the leases run out on their own if this lasts
        for symbol, reply in zip(held, replies, strict=True):
            if symbol not in self.valid_until:
                continue  # given up while the renewal was under way
            if reply == 1:
                self.valid_until[symbol] = sent + self.lease_ms / 1000
            else:
                self.lost[symbol] = s(reply) if reply else None
        return True

    def forget(self, symbol: str) -> None:
        """Stop renewing ``symbol`` (given up, lost, or about to be handed back)."""
        self.valid_until.pop(symbol, None)
        self.lost.pop(symbol, None)

    async def release(self, cmd: Any, symbols: Iterable[str], token: str | None = None) -> None:
        """Hand ``symbols`` back now (each only if this token, or ``token``, still holds it)."""
        symbols = list(symbols)
        for symbol in symbols:
            self.forget(symbol)
        if not symbols:
            return
        pipe = cmd.pipeline(transaction=False)
        for symbol in symbols:
            pipe.eval(RELEASE, 1, self.owner_key(symbol), token or self.token)
        await pipe.execute()

    async def leave(self, cmd: Any) -> None:
        """On a clean stop: hand every lease back and leave the members."""
        await self.release(cmd, self.held)
        await cmd.zrem(self.members_key, self.member)
