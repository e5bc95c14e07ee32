"""Redis password + ACL user: wrong credentials of each kind are a clean error reported at once, with the
URL shown redacted, and the default user's right password works too."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator

import pytest

from scripts.stack import Stack
from tests.conftest import isolated_group
from tests.leakscan import REQUIREPASS, CLIRun, acl_url, leaks, run_cli, secure_redis


@pytest.fixture(scope="module")
def secure_stack() -> Iterator[tuple[Stack, int]]:
    with secure_redis() as stack_and_port:
        yield stack_and_port


BAD_CREDS: dict[str, Callable[[int], str]] = {
    "wrong ACL password": lambda port: acl_url(port, password="wrong-acl-pass-QQQ"),
    "wrong requirepass": lambda port: f"redis://:wrong-rp-pass-QQQ@127.0.0.1:{port}/0",
    "unknown user": lambda port: acl_url(port, user="nobody", password="wrong-user-pass-QQQ"),
    "no password": lambda port: f"redis://127.0.0.1:{port}/0",
}


@pytest.fixture(scope="module")
def bad_creds(secure_stack: tuple[Stack, int]) -> dict[str, CLIRun]:
    """`summarize status` with each kind of wrong credentials, run once for the module."""
    stack, port = secure_stack
    return {
        label: run_cli(isolated_group(stack, url_of(port), "http://127.0.0.1:9/v1").env, "status", "x", deadline=25)
        for label, url_of in BAD_CREDS.items()
    }


@pytest.mark.parametrize(
    "label",
    [
        "wrong ACL password",
        "wrong requirepass",
        "unknown user",
        "no password",
    ],
)
def test_wrong_redis_credentials_are_a_clean_error(
    bad_creds: dict[str, CLIRun], secure_stack: tuple[Stack, int], label: str
) -> None:
    r = bad_creds[label]
    assert r.code == 3, (label, r.code, r.seconds, r.err)
    assert "Traceback" not in r.err and r.err.startswith("summarize status: error: Redis at"), r.err
    assert "rejected the credentials" in r.err, r.err
    password = urllib.parse.urlsplit(BAD_CREDS[label](secure_stack[1])).password
    if password:
        assert password not in r.out + r.err
        assert ":***@127.0.0.1" in r.err  # the URL is shown, redacted
    assert not leaks(r.out + r.err)


@pytest.mark.parametrize("label", list(BAD_CREDS))
def test_wrong_redis_credentials_are_reported_at_once(bad_creds: dict[str, CLIRun], label: str) -> None:
    r = bad_creds[label]
    assert r.code == 3 and r.seconds < 8, (label, r.code, f"{r.seconds:.1f}s")


def test_right_password_of_default_user_works_too(secure_stack: tuple[Stack, int]) -> None:
    stack, port = secure_stack
    r = isolated_group(stack, f"redis://:{REQUIREPASS}@127.0.0.1:{port}/0", "http://127.0.0.1:9/v1").cli(
        "status", "nope-1"
    )
    assert r.returncode == 3 and "unknown batch 'nope-1'" in r.stderr and REQUIREPASS not in r.stderr
