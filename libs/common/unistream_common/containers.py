"""Which replica of a Compose service this process is, for consumer names that survive ``down``/``up``.

A container's hostname is its id, new at every ``docker compose up``: consumer names made from it
left every old replica in the groups after a ``down``/``up`` (nine trainer consumers for three
replicas after three runs). Its *name* is stable: Compose numbers a service's containers 1, 2, ...
(``<project>-trainer-2``), and reuses the numbers. A container does not see its name in its
environment, but Docker's embedded DNS (the ``nameserver`` of a container on a user-defined
network, which Compose always creates) answers a reverse (PTR) lookup of the container's own
address with ``<container name>.<network>``. The resolver library cannot be asked: it answers
from /etc/hosts first, where Docker maps the address to the hostname. So this module sends the
one DNS question itself (RFC 1035, standard library only), with a short timeout.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import socket
import struct
from pathlib import Path

DOCKERENV = Path("/.dockerenv")
RESOLV_CONF = Path("/etc/resolv.conf")
LOOKUP_TIMEOUT_S = 1.0
DNS_PORT = 53
_CONTAINER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*-(\d+)")
_PTR, _IN = 12, 1


class DnsError(ValueError):
    """A DNS reply that does not answer the question."""


@functools.cache
def compose_replica() -> int | None:
    """The replica number of this Compose container (``2`` for ``unistream-trainer-2``), or None.

    None outside a container (no /.dockerenv), and when the container's DNS does not name it
    ``<...>-<n>`` within :data:`LOOKUP_TIMEOUT_S` (``docker run`` on the default bridge has no
    embedded DNS). Asked once per process.
    """
    if not DOCKERENV.exists():
        return None
    with contextlib.suppress(OSError, DnsError):
        address = socket.gethostbyname(socket.gethostname())
        name = reverse_lookup(address, nameserver(RESOLV_CONF.read_text()), LOOKUP_TIMEOUT_S, DNS_PORT)
        return replica_of(name)
    return None


def replica_of(dns_name: str | None) -> int | None:
    """``2`` for ``unistream-trainer-2.unistream_default`` (a Compose container's DNS name), else None."""
    if not dns_name:
        return None
    m = _CONTAINER_NAME_RE.fullmatch(dns_name.split(".", 1)[0])
    return int(m.group(1)) if m else None


def nameserver(resolv_conf: str) -> str:
    """The first ``nameserver`` of a resolv.conf text; DnsError when there is none."""
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            return words[1]
    raise DnsError("no nameserver in resolv.conf")


def ptr_query(address: str, query_id: int) -> bytes:
    """A DNS query (recursion desired) for the PTR record of IPv4 ``address``."""
    labels = [*reversed(address.split(".")), "in-addr", "arpa"]
    question = b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\0"
    return struct.pack("!6H", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack("!2H", _PTR, _IN)


def _read_name(message: bytes, pos: int) -> tuple[str, int]:
    """The domain name at ``pos`` (following compression pointers) and the position after it."""
    labels: list[str] = []
    after: int | None = None
    for _ in range(128):  # bounded: a pointer loop in a hostile reply must not hang us
        if pos >= len(message):
            raise DnsError("name runs past the end of the reply")
        length = message[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(message):
                raise DnsError("truncated compression pointer")
            after = pos + 2 if after is None else after
            pos = ((length & 0x3F) << 8) | message[pos + 1]
            continue
        if length == 0:
            return ".".join(labels), (pos + 1 if after is None else after)
        labels.append(message[pos + 1 : pos + 1 + length].decode("ascii", errors="replace"))
        pos += 1 + length
    raise DnsError("too many labels or pointers")


def parse_ptr_reply(message: bytes, query_id: int) -> str | None:
    """The first PTR name in the reply to query ``query_id``; None when it has none."""
    if len(message) < 12:
        raise DnsError("reply shorter than a DNS header")
    reply_id, flags, questions, answers, _, _ = struct.unpack("!6H", message[:12])
    if reply_id != query_id or not flags & 0x8000:
        raise DnsError("not the reply to our query")
    if flags & 0x000F:  # RCODE: NXDOMAIN, SERVFAIL, ...
        return None
    pos = 12
    for _ in range(questions):
        pos = _read_name(message, pos)[1] + 4
    for _ in range(answers):
        pos = _read_name(message, pos)[1]
        if pos + 10 > len(message):
            raise DnsError("truncated resource record")
        rtype, _, _, rdlength = struct.unpack("!2HIH", message[pos : pos + 10])
        pos += 10
        if rtype == _PTR:
            return _read_name(message, pos)[0]
        pos += rdlength
    return None


def reverse_lookup(address: str, server: str, timeout_s: float, port: int = DNS_PORT) -> str | None:
    """The PTR name of ``address`` as the DNS server at ``server``:``port`` (UDP) gives it."""
    query_id = secrets.randbelow(1 << 16)
    with socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((server, port))  # connected: replies from anyone else are dropped by the kernel
        sock.send(ptr_query(address, query_id))
        return parse_ptr_reply(sock.recv(4096), query_id)
