"""``[shared]``: the config (strict, paths in errors, the URL's password never shown) and
the promise that without it nothing changes and coredis is never imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from providers import ConfigError
from router.config import ProviderConfig, RouterConfig, SharedConfig, decode_config

PASSWORD = "hunter2-very-secret"
URL = f"redis://:{PASSWORD}@127.0.0.1:6399/0"


def _toml(shared: str) -> str:
    return '[providers.a]\nkind = "mock"\n[shared]\n' + textwrap.dedent(shared)


def test_shared_table_decodes_with_defaults() -> None:
    """A `[shared]` table with only the URL takes the documented defaults."""
    config = decode_config(_toml(f'redis_url = "{URL}"'))
    assert config.shared == SharedConfig(redis_url=URL)
    assert (config.shared.prefix, config.shared.timeout) == ("llm-router", 0.05)
    assert (config.shared.lease_time, config.shared.heartbeat) == (30.0, 1.0)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ("bogus = 1", "$.shared.bogus"),
        ('redis_url = "http://x"', "$.shared.redis_url"),
        ('redis_url = "redis://x"\nredis_url_env = "R"', "$.shared.redis_url"),
        ("prefix = 'a'", "$.shared.redis_url"),
        ('redis_url_env = "not a name"', "$.shared.redis_url_env"),
        ('redis_url = "redis://x"\ntimeout = 0', "$.shared.timeout"),
        ('redis_url = "redis://x"\ntimeout = "50ms"', "$.shared.timeout"),
        ('redis_url = "redis://x"\nprefix = "a{b}"', "$.shared.prefix"),
        ('redis_url = "redis://x"\nheartbeat = 20.0', "$.shared.heartbeat"),
        ('redis_url = "redis://x"\nlease_time = nan', "$.shared.lease_time"),
    ],
)
def test_shared_mistakes_name_their_path(body: str, path: str) -> None:
    """Each mistake in `[shared]` is a ConfigError whose path names the field."""
    with pytest.raises(ConfigError) as info:
        decode_config(_toml(body))
    assert info.value.path == path, str(info.value)


def test_redis_password_is_never_shown() -> None:
    """The URL's password appears in no repr of the config, and in no error about it."""
    config = decode_config(_toml(f'redis_url = "{URL}"'))
    assert PASSWORD not in repr(config)
    assert PASSWORD not in repr(config.shared)
    assert "***@127.0.0.1:6399" in repr(config.shared)
    bad = f"http://:{PASSWORD}@host/0"
    with pytest.raises(ConfigError) as info:
        decode_config(_toml(f'redis_url = "{bad}"'))
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value)


def test_url_from_environment() -> None:
    """`redis_url_env` is read when asked for; unset, the error names the field."""
    shared = SharedConfig(redis_url_env="MY_REDIS")
    assert shared.url({"MY_REDIS": URL}) == URL
    with pytest.raises(ConfigError) as info:
        shared.url({})
    assert info.value.path == "$.shared.redis_url_env"
    config = decode_config(_toml('redis_url = "${MY_REDIS_URL}"'), environ={"MY_REDIS_URL": URL})
    assert config.shared is not None
    assert config.shared.url() == URL


def test_without_shared_coredis_is_never_imported() -> None:
    """`import router` and a router opened without `[shared]` leave coredis unimported."""
    code = textwrap.dedent(
        """
        import sys, trio
        import router
        from router import open_router, ChatRequest, Message
        from router.config import RouterConfig, ProviderConfig
        import router.stats, router.events, router.config

        async def main():
            config = RouterConfig(providers={"m": ProviderConfig(kind="mock", rpm=60)})
            async with open_router(config) as r:
                await r.complete(ChatRequest(model="m:echo", messages=[Message.user("hi")]))
                r.statistics(); r.health()

        trio.run(main)
        assert "coredis" not in sys.modules, "coredis was imported"
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_router_config_without_shared_is_unchanged() -> None:
    """A RouterConfig without `[shared]` has ``shared = None``."""
    assert RouterConfig(providers={"a": ProviderConfig(kind="mock")}).shared is None
