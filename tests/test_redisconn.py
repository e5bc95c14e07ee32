"""contract/redisconn.py: an unreachable Redis is a clear error that hides the password."""

from __future__ import annotations

import pytest
import redis

from contract.errors import (
    BrokerUnavailable,
    ConfigError,
)
from contract.settings import Settings


def test_unreachable_redis_is_a_clear_error() -> None:
    from contract.redisconn import ping

    settings = Settings.from_dsn("redis://:pw-hidden@127.0.0.1:9/0")
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
    with pytest.raises(BrokerUnavailable, match="unreachable") as info:
        ping(client, settings)
    assert "pw-hidden" not in str(info.value)


def test_sentinel_settings_parse_and_name_what_is_wrong() -> None:
    from contract.messaging import broker_config
    from contract.redisconn import describe, kombu_broker, sentinel_target

    s = Settings.from_env(
        {
            "REDIS_URL": "redis://:pw-s@ignored/2",
            "REDIS_SENTINELS": "h1:26379, h2:26380,h3",
            "REDIS_SENTINEL_MASTER": "m",
        }
    )
    target = sentinel_target(s)
    assert target is not None and target.master == "m"
    assert target.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert target.credentials() == {"username": None, "password": "pw-s", "db": 2}
    assert s.wait_replicas == 1 and Settings.from_dsn("redis://h:1/0").wait_replicas == 0
    assert describe(s) == "'m' (primary named by the sentinels h1:26379,h2:26380,h3:26379)"
    url, opts = kombu_broker(s)
    assert url == "sentinel://:pw-s@h1:26379/2;sentinel://:pw-s@h2:26380/2;sentinel://:pw-s@h3:26379/2"
    assert opts["master_name"] == "m"
    conf = broker_config(s)["broker_transport_options"]
    assert conf["master_name"] == "m" and conf["global_keyprefix"] and conf["priority_steps"]

    u = Settings.from_env({"REDIS_URL": "rediss+sentinel://u:pw@a:1,b:2/mm/3", "SUMMARIZE_REDIS_WAIT_REPLICAS": "0"})
    t = sentinel_target(u)
    assert t is not None and (t.sentinels, t.master, t.tls) == ((("a", 1), ("b", 2)), "mm", True)
    assert t.credentials() == {"username": "u", "password": "pw", "db": 3} and u.wait_replicas == 0
    assert "pw" not in str(u.public())
    # a broker of its own is taken as it is; REDIS_SENTINELS applies to REDIS_URL only
    assert sentinel_target(s, "redis://broker:6379/0") is None

    with pytest.raises(ConfigError, match="REDIS_SENTINELS: 'h1:x' is not host:port"):
        Settings.from_env({"REDIS_SENTINELS": "h1:x"})
    with pytest.raises(ConfigError, match=r"REDIS_URL .* must name the primary"):
        Settings.from_env({"REDIS_URL": "redis+sentinel://a:1,b:2"})
    with pytest.raises(ConfigError, match="SUMMARIZE_REDIS_WAIT_REPLICAS=-2 must be at least -1"):
        Settings.from_env({"SUMMARIZE_REDIS_WAIT_REPLICAS": "-2"})
