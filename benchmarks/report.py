"""Writing a benchmark's result: a markdown table, and its `## ` section of benchmarks/results.md.

Standard library only: the scripts that import it set BLAS's thread count before numpy is imported.
"""

from __future__ import annotations

from pathlib import Path


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def replace_section(path: Path, title: str, text: str) -> None:
    """Write `## title` and `text` into the markdown file, replacing that section if it is there already."""
    old = path.read_text() if path.exists() else ""
    heading = f"## {title}"
    section = f"{heading}\n\n{text.rstrip()}\n"
    if heading in old:
        before, rest = old.split(heading, 1)
        after = rest.split("\n## ", 1)
        new = before + section + ("\n## " + after[1] if len(after) > 1 else "")
    else:
        new = old.rstrip() + "\n\n" + section if old else section
    path.write_text(new)


def publish(text: str, output: Path | None, title: str) -> None:
    """Print the result, and write it as the `title` section of `output` if given."""
    print()
    print(text)
    if output:
        replace_section(output, title, text)
        print(f"wrote the section to {output}")
