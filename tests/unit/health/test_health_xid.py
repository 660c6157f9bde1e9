"""XID classification and its user extension (flags), and the table docs/health.md shows."""

from __future__ import annotations

import argparse

import pytest

from driver.config import PluginConfig, add_plugin_arguments
from driver.flags import ConfigError
from driver.health.xid import (
    DEFAULT_IGNORED_XIDS,
    XidListError,
    XidPolicy,
    parse_xid_list,
    xid_markdown_table,
)
from tests.support import paths

DOCS = paths.DOCS / "health.md"


def test_application_faults_are_ignorable_and_everything_else_is_fatal() -> None:
    policy = XidPolicy()
    assert [x for x in (13, 31, 43, 45, 68, 109) if policy.is_fatal(x)] == []
    assert all(policy.is_fatal(x) for x in (48, 63, 74, 79, 94, 95, 119))
    assert policy.is_fatal(999), "an XID nobody has described yet is treated as fatal"


def test_users_extend_and_override_the_ignorable_list() -> None:
    policy = XidPolicy.build(ignore={999, 74}, fatal={13})
    assert not policy.is_fatal(999) and not policy.is_fatal(74)
    assert policy.is_fatal(13), "--health-fatal-xids turns a default-ignorable XID fatal"
    assert XidPolicy.build(ignore={31}, fatal={31}).is_fatal(31), "fatal wins when an XID is in both lists"
    assert XidPolicy().ignored == DEFAULT_IGNORED_XIDS


def test_descriptions() -> None:
    policy = XidPolicy()
    assert policy.describe(79) == "XID 79 (GPU has fallen off the bus)"
    assert policy.describe(4242) == "XID 4242"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", frozenset()), ("13", {13}), (" 13, 31 ,43,", {13, 31, 43}), ("48;79", {48, 79})],
)
def test_parse_xid_list(text: str, expected: set[int]) -> None:
    assert parse_xid_list(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"), [("13,x", "'x' is not an XID"), ("0", "out of range"), ("70000", "out of range")]
)
def test_parse_xid_list_names_the_bad_entry(text: str, problem: str) -> None:
    with pytest.raises(XidListError, match=problem):
        parse_xid_list(text, "--health-ignore-xids")


def plugin_config(*extra: str) -> PluginConfig:
    parser = argparse.ArgumentParser()
    add_plugin_arguments(parser)
    return PluginConfig.from_args(parser.parse_args(["--node-name", "n1", *extra]))


def test_flags_reach_the_config() -> None:
    config = plugin_config(
        "--health-ignore-xids", "999,1000", "--health-fatal-xids", "13", "--health-recovery", "manual"
    )
    assert config.health_ignore_xids == {999, 1000} and config.health_fatal_xids == {13}
    assert config.health_recovery == "manual" and config.health
    defaults = plugin_config()
    assert (defaults.health, defaults.health_recovery, defaults.health_stream_timeout) == (True, "probe", 30)


def test_a_bad_xid_flag_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--health-fatal-xids: 'abc'"):
        plugin_config("--health-fatal-xids", "abc")


def test_the_stream_must_refresh_before_the_kubelet_times_out() -> None:
    with pytest.raises(ConfigError, match="--health-stream-interval must be shorter"):
        plugin_config("--health-stream-interval", "30", "--health-stream-timeout", "30")


def test_docs_show_the_table_of_the_code() -> None:
    assert xid_markdown_table() in DOCS.read_text(), "docs/health.md: paste xid_markdown_table()'s output"
