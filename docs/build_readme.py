"""Assemble README.md from docs/readme/*.md (one section per part of the system).

    python docs/build_readme.py

The head (set-up commands, tour) lives in docs/readme/00-head.md; the sections follow in ORDER.
Keeping the sections in their own files lets each part's owner edit its documentation alone.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "00-head",
    "models",
    "training",
    "recipes",
    "data",
    "checkpoints",
    "reliability",
    "convert",
    "export",
    "bench",
    "search",
    "99-tail",
]


def main() -> None:
    parts = []
    for name in ORDER:
        f = HERE / "readme" / f"{name}.md"
        if f.exists():
            parts.append(f.read_text().strip() + "\n")
    text = "\n".join(parts)
    (HERE.parent / "README.md").write_text(text)
    print(f"README.md: {len(text.splitlines())} lines from {len(parts)} sections")


if __name__ == "__main__":
    main()
