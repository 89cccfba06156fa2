"""The docs stay true: every command and flag they show exists in that command's ``--help``, and every
relative link (file and #anchor) resolves.

The oracles: ``--help`` as a user runs it (the app's argument parser prints it; each benchmark's own
``--help`` in a child process), and the files and headings on disk.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python (app\.py|bench/[a-z_]+\.py)((?:[ \t]+[^\s`|]+)*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def shown_commands(text: str) -> list[tuple[str, str | None, set[str]]]:
    """``(script, subcommand, flags)`` for each command line the text shows, a code block's indented
    continuation lines included (the CLI overview wraps long commands)."""
    found: list[tuple[str, str | None, set[str]]] = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code and found and re.match(r"^\s{8,}[\[-]", line):  # a wrapped command's next line
            found[-1][2].update(FLAG.findall(line.strip().split("  ")[0]))
            continue
        for match in COMMAND.finditer(line):
            script, rest = match.group(1), match.group(2)
            words = rest.split()
            sub = words[0] if script == "app.py" and words and re.fullmatch(r"[a-z][a-z-]+", words[0]) else None
            # Flags up to two spaces of description (the CLI overview's right column is prose).
            shown = rest.split("  ")[0] if in_code else rest
            found.append((script, sub, set(FLAG.findall(shown))))
    return found


def _app_help() -> dict[str | None, str]:
    # app.py beside the app/ package: loaded from its file, as `python app.py` runs it.
    spec = importlib.util.spec_from_file_location("rewardlab_cli", ROOT / "app.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    parser = cli.build_parser()
    helps: dict[str | None, str] = {None: parser.format_help()}
    for action in parser._subparsers._group_actions:  # noqa: SLF001  (argparse keeps subparsers here)
        for name, sub in action.choices.items():
            helps[name] = sub.format_help()
    return helps


def _bench_help(script: str) -> str:
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} --help failed: {done.stderr[-500:]}"
    return done.stdout


def test_every_command_and_flag_the_docs_show_is_in_its_help():
    app_help = _app_help()
    bench_help: dict[str, str] = {}
    problems = []
    for doc in DOCS:
        for script, sub, flags in shown_commands(doc.read_text()):
            where = doc.relative_to(ROOT)
            if script == "app.py":
                if sub is not None and sub not in app_help:
                    problems.append(f"{where}: `python app.py {sub}` is not a command")
                    continue
                text = app_help[sub]
            else:
                if not (ROOT / script).exists():
                    problems.append(f"{where}: {script} does not exist")
                    continue
                text = bench_help.setdefault(script, _bench_help(script))
            problems += [f"{where}: `{script}{' ' + sub if sub else ''} {flag}` is not in its --help"
                         for flag in sorted(flags) if flag not in ("--help",) and flag not in text]
    assert problems == []


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def broken_links(docs: list[Path]) -> list[str]:
    problems = []
    for doc in docs:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if not path.exists():
                problems.append(f"{doc.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                problems.append(f"{doc.name}: {target} (no heading #{anchor} in {path.name})")
    return problems


def test_every_relative_link_in_the_docs_resolves():
    assert broken_links(DOCS) == []


def test_the_checks_catch_a_missing_flag_a_missing_file_and_a_missing_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [nowhere](#no-such)\n\n"
                    "```text\npython app.py export OUT --no-such-flag   prose --not-a-flag here\n```\n")
    problems = broken_links([page])
    assert any("missing.md" in p for p in problems) and any("#no-such" in p for p in problems)
    assert not any("#title" in p for p in problems)
    [(script, sub, flags)] = shown_commands(page.read_text())
    assert (script, sub, flags) == ("app.py", "export", {"--no-such-flag"})
    assert "--no-such-flag" not in _app_help()["export"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_each_doc_page_links_back_or_is_the_readme(doc):
    assert doc.name == "README.md" or "../README.md" in doc.read_text()
