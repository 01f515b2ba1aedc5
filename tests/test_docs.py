"""Every command shown in the README and docs/ runs as written: its module exists, its action word is one the tool
takes, and its `key=value` / `group=option` overrides compose with the command's config (an unknown key or option
is an error). Placeholders (`<name>`) are replaced by a value; shell variables (`$f`) by 0."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from src.config import CommandLineError, compose

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIG = {"synth": "synth", "folds": "train", "prepare": "train", "train": "train", "valsets": "train",
          "teacher": "teacher", "probe": "teacher", "pseudo": "pseudo", "selftrain": "selftrain",
          "ensemble": "ensemble", "kernel": "kernel", "leaderboard": "leaderboard", "report": "report",
          "weights": "weights"}
ACTIONS = {"kernel": {"build", "plan", "run", "push"}, "leaderboard": {"table", "lb"}, "report": {"plots", "compare"}}
BANNED = re.compile(r"this (session|round)|previous (round|session)|rerun this|last session|until this|"
                    r"measured since|in the previous", re.IGNORECASE)


def commands(page: Path) -> list[tuple[int, str]]:
    """(line, command) of every `python -m src.<x> ...` in the page's code blocks and inline code."""
    text = page.read_text()
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in re.finditer(r"python -m src\.[a-z_]+(?:[^`#;&|\n]|\|(?=[^ ]))*", line):
            found.append((number, match.group(0).rstrip(" \\")))
    return found


def overrides(command: str) -> tuple[str, str | None, list[str]]:
    """(module, action word or None, overrides) of one shown command."""
    command = re.sub(r"<[^<>]*>", "x", command).replace("$f", "0").replace("\\|", "|")
    words = shlex.split(command)
    module = words[2].removeprefix("src.")
    rest = [w for w in words[3:] if w not in ("...", "[...]")]
    action = rest.pop(0) if rest and "=" not in rest[0] else None
    if module == "pseudo":  # `teacher=` names the pseudo-labels' teacher there (src.pseudo's __main__)
        rest = [f"pseudo.{w}" if w.startswith("teacher=") else w for w in rest]
    return module, action, [w for w in rest if "=" in w]


CASES = [(page, number, cmd) for page in PAGES for number, cmd in commands(page)]


def test_the_pages_show_commands():
    assert len([c for c in CASES if c[0].name == "README.md"]) >= 10 and len(CASES) > 100


@pytest.mark.parametrize("page, number, command", CASES, ids=[f"{c[0].name}:{c[1]}" for c in CASES])
def test_a_shown_command_composes(page, number, command):
    module, action, keys = overrides(command)
    assert (REPO / "src" / f"{module}.py").is_file(), f"{page.name}:{number}: no module src.{module}"
    if module in ACTIONS and action is not None:
        assert action in ACTIONS[module], f"{page.name}:{number}: src.{module} takes no action {action!r}"
    try:
        compose(CONFIG[module], keys)
    except CommandLineError as err:
        pytest.fail(f"{page.name}:{number}: `{command}`: {err}")


def test_the_readme_is_a_front_page_and_no_page_tells_history():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not BANNED.search(line), f"{page.name}:{number}: {line.strip()}"


def test_make_targets_shown_exist():
    targets = set(re.findall(r"(?m)^([a-z0-9_-]+):", (REPO / "Makefile").read_text()))
    for page in PAGES:
        for target in re.findall(r"\bmake ([a-z0-9_-]+)", page.read_text()):
            assert target in targets, f"{page.name}: make {target}"
