"""The documentation stays true: README.md is a landing page, every `effv2` command shown in README.md
and docs/*.md parses with the real command-line parser, every relative link and #anchor resolves, and
the MkDocs site builds with --strict (mkdocs.yml).

What counts as a command: a line inside a fenced code block that starts with `effv2 ` (or a path
ending in /effv2), `python -m effv2 ` or `torchrun ... -m effv2 `, after `$ ` prompts and `NAME=value`
environment prefixes; backslash continuations are joined and trailing `# comments` stripped. In
```console blocks only the `$ ` lines are commands (the rest is output). A command containing the
word `...` is an elided example (`effv2 search ... --first-from runs/search`) and is not parsed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]
README_MAX_LINES = 200

ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
INLINE_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")
LOOKS_LIKE_EFFV2 = re.compile(r"^(\S+=\S*\s+)*(\S*/)?effv2(\s|$)|\s-m\s+effv2(\s|$)")


# --- reading pages -----------------------------------------------------------------------------


def split_page(text: str) -> tuple[list[tuple[str, list[tuple[int, str]]]], list[tuple[int, str]]]:
    """(code blocks as (language, [(line number, line)]), prose lines as [(line number, line)])."""
    blocks: list[tuple[str, list[tuple[int, str]]]] = []
    prose: list[tuple[int, str]] = []
    current: list[tuple[int, str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                current = []
                blocks.append((stripped[3:].strip(), current))
            else:
                current = None
            continue
        (prose if current is None else current).append((number, line))
    return blocks, prose


def effv2_argv(line: str) -> list[str] | None:
    """The words after `effv2` when `line` runs the effv2 CLI, else None. Raises ValueError (shlex)."""
    words = shlex.split(line, comments=True)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None
    if words[0] == "effv2" or words[0].endswith("/effv2"):
        return words[1:]
    launcher = Path(words[0]).name
    if launcher.startswith("python") or launcher == "torchrun":
        for i in range(1, len(words) - 1):
            if words[i] == "-m":
                return words[i + 2 :] if words[i + 1] == "effv2" else None
    return None


def commands_in(text: str) -> list[tuple[int, str, list[str] | None]]:
    """Every effv2 command of the page's code blocks: (line number, command text, argv or None when elided)."""
    found = []
    blocks, _ = split_page(text)
    for language, lines in blocks:
        i = 0
        while i < len(lines):
            number, line = lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i][1].strip()
            i += 1
            command = line.strip()
            if command.startswith("$ "):
                command = command[2:]
            elif language == "console":
                continue  # output, not a command
            try:
                argv = effv2_argv(command)
            except ValueError as exc:  # unbalanced quotes: a broken effv2 example, or a multi-line python -c "
                if LOOKS_LIKE_EFFV2.search(command):
                    found.append((number, command, [f"<shlex: {exc}>"]))
                continue
            if argv is None:
                continue
            found.append((number, command, None if "..." in argv else argv))
    return found


@functools.cache
def _parser():
    from effv2.cli.main import build_parser

    return build_parser()


def parse_error(argv: list[str]) -> str | None:
    """None when the real `effv2` parser accepts argv, else what it said."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            _parser().parse_args(argv)
    except SystemExit as exc:
        return stderr.getvalue().strip() or f"exit {exc.code}"
    return None


# --- heading slugs -------------------------------------------------------------------------------


def heading_texts(text: str) -> list[str]:
    _, prose = split_page(text)
    out = []
    for _, line in prose:
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # a link's text
            out.append(title.replace("`", "").replace("*", ""))
    return out


def mkdocs_slug(title: str) -> str:
    """Python-Markdown's toc slugify, which MkDocs uses."""
    value = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def github_slug(title: str) -> str:
    value = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return value.replace(" ", "-")


def anchors(text: str, slug) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    sep = "_" if slug is mkdocs_slug else "-"
    for title in heading_texts(text):
        base = slug(title)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}{sep}{n}")
        seen[base] = n + 1
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    text = page.read_text()
    # MkDocs renders docs/, GitHub renders the README: each with its own anchor rule.
    slug = github_slug if page == README else mkdocs_slug
    problems = []
    _, prose = split_page(text)
    for number, line in prose:
        for target in INLINE_LINK.findall(CODE_SPAN.sub("code", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(root)}:{number}: {target}"
            if not dest.is_file():
                problems.append(f"{where}: no file {dest}")
            elif anchor and anchor not in anchors(dest.read_text(), slug):
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(root)}")
    return problems


# --- the checks ----------------------------------------------------------------------------------


def test_readme_is_a_landing_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    assert "## Fidelity to the paper and the official code" in lines
    assert not (DOCS / "build_readme.py").exists() and not (DOCS / "readme").exists()


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_each_page_has_one_title(page):
    _, prose = split_page(page.read_text())
    titles = [(n, line) for n, line in prose if line.startswith("# ")]
    assert len(titles) == 1 and titles[0][0] == 1, f"{page.relative_to(ROOT)}: '# ' headings at {titles}"


def test_the_command_finder_and_the_parser_check():
    sample = "\n".join(
        [
            "```",
            "effv2 models --json   # a comment",
            "EFFV2_DATA=/d python -m effv2 demo --time-budget 10m",
            "torchrun --nproc_per_node 2 -m effv2 train --model m --data d \\",
            "    --out runs/x",
            "python benchmarks/bench_models.py compare",
            "effv2 train ... --recipe my.json",
            "effv2 train --no-such-flag",
            "effv2 models 'unclosed",
            'python -c "import effv2',
            "```",
            "```console",
            "$ .venv/bin/effv2 recipes --list",
            "effv2 train: error: this is output",
            "```",
            "effv2 models outside a code block",
        ]
    )
    found = commands_in(sample)
    assert [(n, argv) for n, _, argv in found] == [
        (2, ["models", "--json"]),
        (3, ["demo", "--time-budget", "10m"]),
        (4, ["train", "--model", "m", "--data", "d", "--out", "runs/x"]),
        (7, None),
        (8, ["train", "--no-such-flag"]),
        (9, ["<shlex: No closing quotation>"]),
        (13, ["recipes", "--list"]),
    ]
    assert parse_error(["models", "--json"]) is None
    assert "unrecognized arguments: --no-such-flag" in parse_error(["train", "--no-such-flag"])
    assert parse_error(["no-such-command"]) is not None
    assert parse_error(found[4][2]) is not None  # a broken quote fails the page, it is not skipped


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_command_shown_parses(page):
    failures = []
    for number, command, argv in commands_in(page.read_text()):
        if argv is None:
            continue
        error = parse_error(argv)
        if error:
            failures.append(f"{page.relative_to(ROOT)}:{number}: {command}\n    -> {error.splitlines()[-1]}")
    assert not failures, "commands that the effv2 parser refuses:\n" + "\n".join(failures)


def test_the_docs_show_the_commands_of_every_subcommand():
    """The finder really sees the manual's commands: every subcommand appears, parsed, somewhere."""
    from effv2.cli.main import COMMANDS

    shown = {argv[0] for page in PAGES for _, _, argv in commands_in(page.read_text()) if argv}
    assert set(COMMANDS) <= shown, f"no parsed example of {sorted(set(COMMANDS) - shown)}"


def test_the_link_checker_catches_broken_links(tmp_path):
    page = tmp_path / "p.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Training: `effv2 train`, `eval`\n")
    page.write_text(
        "# P\n\n[ok](other.md#training-effv2-train-eval) [file](gone.md) [anchor](other.md#nope)\n"
        "`[not a link](gone.md)` [web](https://example.org)\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert "gone.md" in problems[0] and "#nope" in problems[1]


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_relative_link_resolves(page):
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs / mkdocstrings not installed (pip install -e '.[docs]')",
)
def test_the_site_builds_strict(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count('id="effv2.') > 20  # docstrings rendered
