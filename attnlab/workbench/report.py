"""Figures in the README and the docs, rendered from the records under `results/`.

A page never types a measured figure by hand. It holds render blocks, which `attnlab report` fills:

    <!-- render: results/lm.json section="Held-out loss" plot=results/lm.png -->
    (filled by attnlab report)
    <!-- /render -->

The first word names a record (`results/NAME.json`, with its markdown `results/NAME.md` beside it). Options:

- `section="HEADING"`: the body of that heading of the record's markdown (default: the whole page minus its title);
- `table="PREFIX"`: only the paragraph starting with PREFIX and the table that follows it;
- `plot=results/NAME.png`: the plot, below the table.

Every block starts with the record's provenance (command, commit, machine, date) and, when the code the record
measures (a member's modeling and configuration files) changed after the record's commit, a warning naming the
change. `results/verdicts.json` renders as the verdict table: each verdict's evidence is read from a record by a
key path, so a verdict's figures are never typed either.

`attnlab report` rewrites the pages; `attnlab report --check` lists the pages that differ from their records and
fails (tests/test_report.py runs it, so a figure cannot go stale without the suite noticing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- render: (?P<spec>[^\n]*?) -->\n)(?P<body>.*?)(<!-- /render -->)", re.DOTALL)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
PAGE_GLOBS = ("README.md", "docs/*.md", "docs/members/*.md")


class RenderError(ValueError):
    """A render block that names a missing record, section, table or plot."""


@dataclass
class Block:
    record: str
    section: str | None = None
    table: str | None = None
    plot: str | None = None

    @classmethod
    def parse(cls, spec: str, page: Path) -> "Block":
        words = shlex.split(spec)
        if not words:
            raise RenderError(f"{page}: an empty render block (write <!-- render: results/NAME.json -->)")
        options = {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep or key not in ("section", "table", "plot"):
                raise RenderError(f"{page}: unknown render option {word!r} (section=, table=, plot=)")
            options[key] = value
        return cls(words[0], **options)


# ---------------------------------------------------------------------------------------------------------------
# Records: provenance and what code they measure


def provenance(record: dict | list) -> dict:
    """command, commit, machine, date of a record in any of the layouts the benchmarks write."""
    if isinstance(record, list):
        return {}
    info = record.get("info") if isinstance(record.get("info"), dict) else record
    return {key: info.get(key) for key in ("command", "machine", "date", "uncommitted_code")} | {
        "commit": info.get("git_commit") or info.get("commit")}


def commit_label(commit: str | None, uncommitted: list[str] | None = None) -> str:
    """How a record's commit is shown: "commit abc1234", with the code files changed since it when there were any."""
    label = f"commit {commit}" if commit else "commit not recorded"
    return label + (f" with uncommitted changes to {', '.join(uncommitted)}" if uncommitted else "")


def member_files(record_text: str, root: Path) -> list[str]:
    """The code a record measures: the modeling and configuration files of every member named in it (hybrids count
    as their member), and the example mixer's file when it is named."""
    from ..members import MEMBERS, TIME_SERIES_MEMBERS

    def named(name: str) -> bool:  # as a word of its own or the start of one ("vqlnmlp_table", "elita_attention")
        return re.search(rf"(?<![a-z_]){name}(?![a-z])", record_text) is not None

    files = []
    for member in [*MEMBERS, *TIME_SERIES_MEMBERS]:
        if named(member):
            files += [f"attnlab/modeling_{member}.py", f"attnlab/configuration_{member}.py"]
    if named("retention"):
        files.append("examples/retention/retention.py")
    return [path for path in files if (root / path).exists()]


def git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def later_changes(root: Path, commit: str, files: list[str]) -> str | None:
    """The newest commit after `commit` that changed one of `files` from what it was at `commit`, as "abc1234
    (2026-12-01): path, path"; None when every file is as it was. Raises RenderError when the history cannot tell (no git, or the commit is not in it)."""
    if git(root, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        raise RenderError(f"commit {commit} is not in this repository's history (a shallow clone?): the record's age "
                          f"against the code cannot be checked")
    if not files:
        return None
    # What counts is the code, not the history: a change that was later reverted leaves the record current.
    changed = git(root, "diff", "--name-only", commit, "HEAD", "--", *files) or ""
    if not changed:
        return None
    newest = git(root, "log", "-1", "--format=%h %cs", f"{commit}..HEAD", "--", *changed.split())
    short, date = newest.split()
    return f"{short} ({date}): {', '.join(changed.split())}"


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def relink(text: str, source_dir: Path, link) -> str:
    """Rebase the relative links of markdown written in `source_dir` with `link(path) -> str`."""

    def rebase(match):
        target = match.group(2)
        if re.match(r"[a-z]+:|#|/", target):
            return match.group(0)
        return f"{match.group(1)}{link(source_dir / target)}{match.group(3)}"

    return LINK.sub(rebase, text)


def section_of(markdown: str, heading: str | None, where: str) -> str:
    lines = markdown.strip("\n").split("\n")
    if heading is None:
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        return "\n".join(lines).strip("\n")
    for start, line in enumerate(lines):
        match = HEADING.match(line)
        if match and match.group(2) == heading:
            level = len(match.group(1))
            end = next((i for i in range(start + 1, len(lines))
                        if (m := HEADING.match(lines[i])) and len(m.group(1)) <= level), len(lines))
            return "\n".join(lines[start + 1:end]).strip("\n")
    found = [m.group(2) for line in lines if (m := HEADING.match(line))]
    raise RenderError(f"{where}: no heading {heading!r} (headings: {found})")


def table_of(markdown: str, prefix: str, where: str) -> str:
    paragraphs = re.split(r"\n\s*\n", markdown.strip("\n"))
    for i, paragraph in enumerate(paragraphs):
        if paragraph.startswith(prefix):
            picked = [paragraph]
            if i + 1 < len(paragraphs) and paragraphs[i + 1].lstrip().startswith("|"):
                picked.append(paragraphs[i + 1])
            return "\n\n".join(picked)
    raise RenderError(f"{where}: no paragraph starting with {prefix!r}")


def lookup(record, path: str, where: str):
    """A value of a record by a key path of `/`-separated steps: dict keys, list indices, or
    `field=value,field=value` to pick the one list element whose fields match (`runs/model=elita,lr=0.01/loss`)."""
    value = record
    for key in path.split("/"):
        if isinstance(value, list):
            if "=" in key:
                wanted = dict(condition.partition("=")[::2] for condition in key.split(","))
                matches = [item for item in value
                           if isinstance(item, dict) and all(str(item.get(f)) == v for f, v in wanted.items())]
                if len(matches) != 1:
                    raise RenderError(f"{where}: {path!r}: {len(matches)} list items with {key}")
                value = matches[0]
            else:
                try:
                    value = value[int(key)]
                except (ValueError, IndexError):
                    raise RenderError(f"{where}: {path!r}: no list item {key!r}") from None
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise RenderError(f"{where}: no key {key!r} on the path {path!r}")
    return value


def evidence_value(record, spec, where: str):
    """A key path, or {"ratio": [path, path]}: the first value divided by the second."""
    if isinstance(spec, dict) and set(spec) == {"ratio"}:
        numerator, denominator = (lookup(record, path, where) for path in spec["ratio"])
        return numerator / denominator
    return lookup(record, spec, where)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


class Renderer:
    def __init__(self, root: Path = REPO):
        self.root = Path(os.path.abspath(root))
        # A record is read once per run, though many blocks (and every verdict citing it) show it.
        self._texts: dict[Path, str] = {}
        self._records: dict[Path, dict | list] = {}
        self._ages: dict[Path, str | None] = {}

    def age(self, record, path: Path) -> str | None:
        """Why a record is older than the code it measures: "unknown" (no commit, and it measures a member), the
        later change to that code ("abc1234 (date): files"), or None when it is current (or measures no member)."""
        if path not in self._ages:
            files, commit = member_files(self._texts[path], self.root), provenance(record).get("commit")
            if not commit:
                self._ages[path] = "unknown" if files else None
            else:
                self._ages[path] = later_changes(self.root, commit, files)
        return self._ages[path]

    def link(self, path: Path, page_dir: Path) -> str:
        """`path` as a link from a page in `page_dir`. The docs site sees the records through the `docs/results`
        symlink (MkDocs serves only what is under docs/), so a docs page links there rather than to ../results."""
        path, page_dir = Path(os.path.abspath(path)), Path(os.path.abspath(page_dir))
        docs, results = self.root / "docs", self.root / "results"
        if page_dir.is_relative_to(docs) and path.is_relative_to(results) and (docs / "results").is_symlink():
            path = docs / "results" / path.relative_to(results)
        return Path(os.path.relpath(path, page_dir)).as_posix()

    def load(self, record_path: str, where: str) -> tuple[dict | list, Path]:
        path = self.root / record_path
        if path not in self._records:
            if path.suffix != ".json" or not path.is_file():
                raise RenderError(f"{where}: no record {record_path} (a results/NAME.json file)")
            self._texts[path] = path.read_text()
            self._records[path] = json.loads(self._texts[path])
        return self._records[path], path

    def provenance_line(self, record, path: Path, page_dir: Path, where: str) -> str:
        facts = provenance(record)
        link = f"[`{path.relative_to(self.root).as_posix()}`]({self.link(path.with_suffix('.md'), page_dir)})"
        parts = [f"`{facts['command']}`" if facts.get("command") else "command not recorded",
                 commit_label(facts.get("commit"), facts.get("uncommitted_code")),
                 facts.get("machine") or "machine not recorded", facts.get("date") or "date not recorded"]
        line = f"*Record {link}: {'; '.join(parts)}.*"
        changed = self.age(record, path)
        if changed == "unknown":
            line += ("\n\n> **Age unknown:** this record has no commit, so it cannot be checked against the "
                     "code it measures; rerun its command to replace it.")
        elif changed:
            line += (f"\n\n> **Older than the code it measures:** {changed} changed after the record's commit "
                     f"{facts['commit']}; rerun its command to refresh it.")
        return line

    def block(self, block: Block, page: Path) -> str:
        where = f"{page.relative_to(self.root)}: {block.record}"
        record, path = self.load(block.record, where)
        page_dir = page.parent
        if isinstance(record, dict) and "verdicts" in record:
            return self.verdicts(record, page_dir, where)
        out = [self.provenance_line(record, path, page_dir, where)]
        markdown_path = path.with_suffix(".md")
        if block.section is not None or block.table is not None or markdown_path.exists():
            if not markdown_path.exists():
                raise RenderError(f"{where}: no markdown {markdown_path.relative_to(self.root)} beside the record")
            body = section_of(markdown_path.read_text(), block.section, where)
            if block.table is not None:
                body = table_of(body, block.table, where)
            out.append(relink(body, markdown_path.parent, lambda target: self.link(target, page_dir)))
        if block.plot is not None:
            plot = self.root / block.plot
            if not plot.is_file():
                raise RenderError(f"{where}: no plot {block.plot}")
            out.append(f"![{plot.stem}]({self.link(plot, page_dir)})")
        return "\n\n".join(out)

    def verdicts(self, record: dict, page_dir: Path, where: str) -> str:
        """The verdict table: claim, verdict, and evidence figures read from records by key path."""
        rows = ["| seed | claim | verdict | evidence |", "|---|---|---|---|"]
        stale = []
        for verdict in record["verdicts"]:
            evidence = []
            for item in verdict["evidence"]:
                source, path = self.load(item["record"], where)
                values = {name: evidence_value(source, key, f"{where}: {item['record']}")
                          for name, key in item.get("values", {}).items()}
                try:
                    text = item["text"].format(**values)
                except (KeyError, ValueError) as error:
                    raise RenderError(f"{where}: evidence text {item['text']!r}: {error}") from None
                evidence.append(f"{text} ([record]({self.link(path.with_suffix('.md'), page_dir)}))")
                if self.age(source, path) not in (None, "unknown"):
                    stale.append(item["record"])
            rows.append(f"| {verdict['seed']} | {verdict['claim']} | **{verdict['verdict']}** | "
                        f"{'; '.join(evidence)} |")
        out = "\n".join(rows)
        if stale:
            out += ("\n\n> **Older than the code they measure:** " + ", ".join(f"`{s}`" for s in sorted(set(stale)))
                    + " (their members' code changed after they were recorded).")
        return out

    def page(self, page: Path) -> str:
        text = page.read_text()

        def fill(match):
            block = Block.parse(match.group("spec"), page.relative_to(self.root))
            return f"{match.group(1)}{self.block(block, page)}\n{match.group(4)}"

        return BLOCK.sub(fill, text)

    def pages(self) -> list[Path]:
        return sorted({path for pattern in PAGE_GLOBS for path in self.root.glob(pattern)})


def stale_pages(root: Path = REPO) -> list[Path]:
    """Pages whose committed text differs from what their records render."""
    renderer = Renderer(root)
    return [page for page in renderer.pages() if renderer.page(page) != page.read_text()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlab report", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; list the pages that differ from their records and exit 1 if any")
    parser.add_argument("--root", default=".", help="the repository root (README.md and results/ in it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    if not (root / "results").is_dir() or not (root / "README.md").is_file():
        parser.exit(2, f"attnlab report: error: {root} is not an attnlab checkout (no README.md and results/ there)\n")
    renderer = Renderer(root)
    try:
        rendered = {page: renderer.page(page) for page in renderer.pages()}
    except RenderError as error:
        parser.exit(2, f"attnlab report: error: {error}\n")
    differ = [page for page, text in rendered.items() if text != page.read_text()]
    if args.check:
        for page in differ:
            print(f"{page.relative_to(root)}: differs from its records (run attnlab report)")
        return 1 if differ else 0
    for page in differ:
        page.write_text(rendered[page])
        print(f"rendered {page.relative_to(root)}")
    print(f"{len(rendered)} pages, {len(differ)} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
