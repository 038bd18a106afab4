"""``python -m framework --help`` shows every command, core and plugin, with its one-line help, and its prose
never names a partial list of commands (the old description named six of nine); every option of every command
has help text."""

import re

import pytest

from framework.cli import build_parser, main
from framework.plugin_manager import collect_commands


@pytest.fixture(scope="module")
def parser_and_help():
    parser = build_parser(collect_commands())
    return parser, parser.format_help()


def _commands(parser) -> set[str]:
    return set(next(a for a in parser._actions if a.dest == "command").choices)


def test_help_lists_every_command_with_its_help(parser_and_help):
    parser, text = parser_and_help
    commands = _commands(parser)
    assert {"run", "validate", "report", "bench", "gpu-check", "ui", "generate", "analyze"} <= commands
    listed = set(re.findall(r"^ {4}([\w-]+)(?: |$)", text, flags=re.M))  # a long name wraps its help
    assert listed == commands, f"missing from --help: {commands - listed}"
    assert "[plugin plugins.representations.analyze]" in " ".join(text.split())


def test_help_prose_names_all_commands_or_none(parser_and_help):
    parser, text = parser_and_help
    prose = text.split("positional arguments:")[0].split("\n", 2)[-1]  # below the usage line
    named = {c for c in _commands(parser) if re.search(rf"\b{c}\b", prose)}
    assert named in (set(), _commands(parser)), f"the description names only {sorted(named)}"


def test_main_help_exits_zero_and_prints_it(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "report" in out and "bench" in out and "analyze" in out


def test_every_option_of_every_command_has_help(parser_and_help):
    parser, _ = parser_and_help
    sub = next(a for a in parser._actions if a.dest == "command")
    bare = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sp in sub.choices.items()
            for a in sp._actions if not a.help]
    assert bare == []
