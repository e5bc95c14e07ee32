"""contract/redisconn.py: an unreachable Redis is a clear error that hides the password."""

from __future__ import annotations

import pytest
import redis

from contract.errors import (
    BrokerUnavailable,
)
from contract.settings import Settings


def test_unreachable_redis_is_a_clear_error() -> None:
    from contract.redisconn import ping

    settings = Settings.from_dsn("redis://:pw-hidden@127.0.0.1:9/0")
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
    with pytest.raises(BrokerUnavailable, match="unreachable") as info:
        ping(client, settings)
    assert "pw-hidden" not in str(info.value)
