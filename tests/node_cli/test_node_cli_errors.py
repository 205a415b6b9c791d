"""`python -m session_node` start-up errors: one line on stderr, exit code 2, no traceback,
nothing left running. And `--help` documents every option."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
from node_cli.nodekit import run_node
from support import ADMIN_A, NODE_A, VaultProcess, clean_env, free_port

from session_node.config import build_parser


def assert_one_line_error(result, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("session_node: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


def node_args(tmp_path: Path, vault: str = "127.0.0.1:1", *extra: str) -> list[str]:
    return ["--node-id", "cli", "--vault", vault, "--data-dir", str(tmp_path / "data"), "--session", "s1", *extra]


def test_missing_token(tmp_path: Path) -> None:
    result = run_node(*node_args(tmp_path), env=clean_env())
    assert_one_line_error(result, "no token", "SESSION_NODE_TOKEN")
    assert not (tmp_path / "data").exists()  # refused before touching anything


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden"])
def test_bad_session_name(tmp_path: Path, name: str) -> None:
    args = ["--node-id", "cli", "--vault", "127.0.0.1:1", "--data-dir", str(tmp_path / "data"), "--session", name]
    result = run_node(*args, env=clean_env(SESSION_NODE_TOKEN=NODE_A))
    assert_one_line_error(result, "session name")
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--vault", "127.0.0.1"], "HOST:PORT"),
        (["--connect-timeout", "0"], "--connect-timeout"),
        (["--log-level", "chatty"], "--log-level"),
        (["--lease-ttl", "1"], "--lease-ttl"),
    ],
)
def test_bad_values(tmp_path: Path, extra: list[str], fragment: str) -> None:
    result = run_node(*node_args(tmp_path), *extra, env=clean_env(SESSION_NODE_TOKEN=NODE_A))
    assert_one_line_error(result, fragment)


def test_unparsable_value_is_argparse_usage_and_exit_2(tmp_path: Path) -> None:
    result = run_node(*node_args(tmp_path), "--connect-timeout", "soon", env=clean_env(SESSION_NODE_TOKEN=NODE_A))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith("invalid float value: 'soon'")


def test_nothing_listening_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    started = time.monotonic()
    result = run_node(*node_args(tmp_path, address, "--connect-timeout", "1"), env=clean_env(SESSION_NODE_TOKEN=NODE_A))
    elapsed = time.monotonic() - started
    assert_one_line_error(result, "cannot reach the vault", address, "within 1 s")
    assert elapsed < 1 + 5  # the timeout, plus interpreter start-up and imports on a slow machine


def test_unresolvable_vault_host(tmp_path: Path) -> None:
    args = node_args(tmp_path, "no-such-host.invalid:50051", "--connect-timeout", "1")
    result = run_node(*args, env=clean_env(SESSION_NODE_TOKEN=NODE_A))
    assert_one_line_error(result, "cannot reach the vault", "no-such-host.invalid:50051")


@pytest.mark.parametrize(
    ("token", "fragment"),
    [("wrong-token-0123456789abcdef", "refused the token"), (ADMIN_A, "refused the token")],
    ids=["unknown", "admin-role"],
)
def test_token_refused_by_a_running_vault(tmp_path: Path, vault: VaultProcess, token: str, fragment: str) -> None:
    args = node_args(tmp_path, vault.address, "--connect-timeout", "5")
    result = run_node(*args, env=clean_env(SESSION_NODE_TOKEN=token))
    assert_one_line_error(result, fragment)
    assert token not in result.stderr  # the secret is never echoed


def test_token_flag_overrides_the_environment(tmp_path: Path, vault: VaultProcess) -> None:
    args = node_args(tmp_path, vault.address, "--connect-timeout", "5", "--token", "wrong-token-0123456789abcdef")
    result = run_node(*args, env=clean_env(SESSION_NODE_TOKEN=NODE_A))
    assert_one_line_error(result, "refused the token")


def test_data_dir_under_a_regular_file(tmp_path: Path, vault: VaultProcess) -> None:
    # A path whose parent is a file cannot be created even by root (chmod tricks would not stop root).
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    data_dir = blocker / "data"
    args = ["--node-id", "cli", "--vault", vault.address, "--data-dir", str(data_dir), "--session", "s1"]
    result = run_node(*args, env=clean_env(SESSION_NODE_TOKEN=NODE_A))
    assert_one_line_error(result, "data dir", str(data_dir), "not writable")


def test_data_dir_that_is_a_regular_file(tmp_path: Path, vault: VaultProcess) -> None:
    data_dir = tmp_path / "a-file"
    data_dir.write_text("not a directory")
    args = ["--node-id", "cli", "--vault", vault.address, "--data-dir", str(data_dir), "--session", "s1"]
    result = run_node(*args, env=clean_env(SESSION_NODE_TOKEN=NODE_A))
    assert_one_line_error(result, "data dir", "not writable")
    assert data_dir.read_text() == "not a directory"


def test_help_documents_every_option() -> None:
    result = run_node("--help", env=clean_env())
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    parser = build_parser()  # neonize-free: the CLI module only parses
    options = [a for a in parser._actions if a.option_strings]
    assert len(options) > 10
    undocumented = [a.option_strings for a in options if not a.help or a.help == argparse.SUPPRESS]
    assert undocumented == []
    for action in options:
        for flag in action.option_strings:
            assert flag in text, f"{flag} missing from --help"
    for word in ("SESSION_NODE_TOKEN", "neonize", "simulated", "HOST:PORT", "events.jsonl"):
        assert word in text, word
