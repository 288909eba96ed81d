"""The one pooled client session the gateway forwards through."""

from __future__ import annotations

import aiohttp

from gateway.config import Config

#: Idle upstream connections are kept this long for reuse (the runtime's own idle close is longer).
KEEPALIVE_S = 30.0


def make_client_session(config: Config) -> aiohttp.ClientSession:
    """A keep-alive session that adds nothing to what we sign and changes nothing it receives.

    aiohttp would otherwise add User-Agent, Accept, Accept-Encoding and Content-Type after
    we signed, inflate compressed answers, keep cookies and follow redirects: all off.
    """
    connector = aiohttp.TCPConnector(
        limit=config.upstream_pool_size,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_S,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )
