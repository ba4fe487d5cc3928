"""The CLI's command line, parsed without running it: where options may go, what is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from podshare import __version__
from podshare.__main__ import parse_args


def test_global_options_before_and_after_the_command_are_the_same() -> None:
    before = parse_args(["--redis", "redis://h/0", "--json", "--hydrate-timeout", "1", "keys", "s"])
    after = parse_args(["keys", "s", "--redis", "redis://h/0", "--json", "--hydrate-timeout", "1"])
    mixed = parse_args(["--json", "keys", "s", "--hydrate-timeout", "1", "--redis", "redis://h/0"])
    for args in (before, after, mixed):
        assert (args.command, args.store, args.redis, args.json, args.hydrate_timeout) == (
            "keys",
            "s",
            "redis://h/0",
            True,
            1.0,
        )
        assert args.node_id.startswith("cli-")


def test_peers_given_on_both_sides_add_up() -> None:
    args = parse_args(["--tcp", "a:1", "--peer", "b:2", "members", "s", "--peer", "c:3"])
    assert args.peer == ["b:2", "c:3"]


def test_an_option_after_the_command_wins_over_the_same_before_it() -> None:
    args = parse_args(["--node-id", "one", "--tcp", "a:1", "keys", "s", "--node-id", "two"])
    assert args.node_id == "two"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "s"], "needs --redis URL, --nats URL or --tcp"),
        (["--redis", "redis://h", "keys", "s", "--tcp", "a:1"], "not --redis and --tcp"),
        (["--redis", "redis://h", "--peer", "a:1", "keys", "s"], "--peer adds TCP peers"),
        (["--tcp", "a:1", "watch", "s", "--key", "k", "--prefix", "p"], "not both"),
        (["--tcp", "a:1", "set", "s", "k", "{"], "not valid JSON"),
        (["--tcp", "a:1", "keys", "s", "--secret", ""], "is empty"),
    ],
)
def test_misuse_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_set_parses_json_strictly_and_raw_keeps_the_text() -> None:
    base = ["--tcp", "a:1", "set", "s", "k"]
    assert parse_args([*base, '{"a": [1, true]}']).parsed_value == {"a": [1, True]}
    assert parse_args([*base, '"dark"']).parsed_value == "dark"
    assert parse_args([*base, "--raw", '{"a":']).parsed_value == '{"a":'
    assert parse_args([*base, "1000", "--raw"]).parsed_value == "1000"


def test_secret_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODSHARE_SECRET", "from-env")
    base = ["--tcp", "a:1", "keys", "s"]
    assert parse_args(base).secret == "from-env"
    assert parse_args([*base, "--secret", "from-argv"]).secret == "from-argv"
    monkeypatch.delenv("PODSHARE_SECRET")
    assert parse_args(base).secret is None


def test_secret_file_loses_its_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(" s3cret \n", encoding="utf-8")
    assert (
        parse_args(["--tcp", "a:1", "keys", "s", "--secret-file", str(path)]).secret == " s3cret "
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"podshare {__version__}\n"
