"""The README's and the docs' figures are rendered from the records under results/, and the committed pages are what
the records render today (attnlab report)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from attnlab.workbench import report
from attnlab.workbench.report import Block, RenderError, Renderer, member_files, stale_pages

REPO = Path(__file__).resolve().parents[1]


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def full_history() -> bool:
    try:
        return git(REPO, "rev-parse", "--is-shallow-repository") == "false"
    except (OSError, subprocess.CalledProcessError):
        return False


@pytest.mark.skipif(not full_history(), reason="needs the repository's git history to date the records")
def test_committed_pages_are_what_the_records_render():
    stale = stale_pages(REPO)
    assert not stale, (f"pages differ from their records: {[str(p.relative_to(REPO)) for p in stale]}; "
                       f"run `attnlab report` and commit")


RECORD_MD = """# Speed

```bash
attnlab bench speed
```

## Training

Training tokens/s, ratio to Llama's:

| model | T=512 |
|---|---|
| elita | 10 (2.00x) |

Peak memory:

| model | T=512 |
|---|---|
| elita | 5 |

![curve](speed.png)

## Decoding

| model | ms |
|---|---|
| elita | 3 |
"""


@pytest.fixture
def repo(tmp_path):
    """A tiny checkout: one member file, one record of it at the first commit, a README and a docs page."""
    (tmp_path / "attnlab").mkdir()
    (tmp_path / "attnlab" / "modeling_elita.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results").symlink_to("../results")
    (tmp_path / "results" / "speed.md").write_text(RECORD_MD)
    (tmp_path / "results" / "speed.png").write_bytes(b"png")
    (tmp_path / "results" / "llama.json").write_text(json.dumps({"info": {"command": "attnlab bench x"},
                                                                 "settings": {"models": ["llama"]}, "acc": 0.5}))
    (tmp_path / "README.md").write_text("# r\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "start")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "code")
    commit = git(tmp_path, "rev-parse", "--short", "HEAD")
    (tmp_path / "results" / "speed.json").write_text(json.dumps(
        {"info": {"command": "attnlab bench speed", "git_commit": commit, "machine": "AMD EPYC, 1 threads",
                  "date": "2026-12-02 01:00 UTC"}, "settings": {"models": ["elita", "llama"]},
         "medians": [{"model": "elita", "kind": "train", "tokens_per_s": 10.0},
                     {"model": "elita", "kind": "decode", "tokens_per_s": 20.0}]}))
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "record")
    return tmp_path


def render(repo, text, page="README.md"):
    path = repo / page
    path.write_text(text)
    return Renderer(repo).page(path)


def block(spec):
    return f"before\n<!-- render: {spec} -->\nold text\n<!-- /render -->\nafter\n"


def test_a_block_shows_the_provenance_and_the_chosen_section(repo):
    out = render(repo, block('results/speed.json section="Training"'))
    assert out.startswith("before\n<!-- render: results/speed.json section=\"Training\" -->\n")
    assert out.endswith("<!-- /render -->\nafter\n")
    assert "old text" not in out
    assert "`attnlab bench speed`" in out and "AMD EPYC, 1 threads" in out and "2026-12-02 01:00 UTC" in out
    assert "| elita | 10 (2.00x) |" in out and "| elita | 5 |" in out
    assert "| elita | 3 |" not in out  # the next section is not included
    assert "Older than the code" not in out  # the member's code has not changed since the record
    assert "](results/speed.png)" in out  # the record's own relative link, rebased onto the README


def test_the_rendered_page_is_stable(repo):
    once = render(repo, block('results/speed.json section="Decoding"'))
    assert render(repo, once) == once


def test_table_picks_one_paragraph_and_its_table(repo):
    out = render(repo, block('results/speed.json section="Training" table="Peak memory"'))
    assert "| elita | 5 |" in out and "(2.00x)" not in out


def test_a_plot_and_links_from_a_docs_page_go_through_the_docs_results_link(repo):
    (repo / "docs" / "members").mkdir()
    out = render(repo, block("results/speed.json plot=results/speed.png"), page="docs/members/elita.md")
    assert "![speed](../results/speed.png)" in out  # docs/members -> docs/results (the site's view of results/)
    assert "(../results/speed.md)" in out
    assert "# Speed" not in out and "| elita | 3 |" in out  # no section: the whole record minus its title


def test_a_record_older_than_its_member_code_is_marked(repo):
    fresh = render(repo, block("results/speed.json"))
    (repo / "attnlab" / "modeling_elita.py").write_text("x = 2\n")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "change elita")
    stale = render(repo, block("results/speed.json"))
    assert "Older than the code it measures" not in fresh
    assert "Older than the code it measures" in stale and "attnlab/modeling_elita.py" in stale
    (repo / "attnlab" / "modeling_elita.py").write_text("x = 1\n")  # the change reverted: the code is as measured
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "revert")
    assert "Older than the code it measures" not in render(repo, block("results/speed.json"))


def test_a_record_from_a_modified_checkout_says_so(repo):
    from attnlab.workbench.benchmarking import uncommitted_code

    assert uncommitted_code(repo) == []
    (repo / "attnlab" / "modeling_elita.py").write_text("x = 3\n")
    (repo / "results" / "speed.md").write_text("a record, not code\n")
    assert uncommitted_code(repo) == ["attnlab/modeling_elita.py"]  # the code the run measures, not its outputs
    record = json.loads((repo / "results" / "speed.json").read_text())
    record["info"]["uncommitted_code"] = uncommitted_code(repo)
    (repo / "results" / "modified.json").write_text(json.dumps(record))
    assert "with uncommitted changes to attnlab/modeling_elita.py" in render(repo, block("results/modified.json"))
    assert "uncommitted" not in render(repo, block("results/speed.json"))
    assert uncommitted_code(repo.parent) is None  # not a checkout


def test_a_record_without_a_commit_is_marked_only_when_it_measures_a_member(repo):
    (repo / "results" / "old.json").write_text(json.dumps([{"model": "elita", "median_s": 1.0}]))
    assert "Age unknown" in render(repo, block("results/old.json"))
    assert "Age unknown" not in render(repo, block("results/llama.json"))  # llama is transformers' code


def test_a_member_named_at_the_start_of_a_word_is_measured_code():
    """A record names its member inside longer words ("vqlnmlp_table", "elita_attention", "retention:Retention");
    a word that only ends with a member's name ("modeling_elita") or contains it is not the member."""
    root = Path(__file__).resolve().parents[1]
    assert "attnlab/modeling_vqlnmlp.py" in member_files('{"name": "vqlnmlp_table"}', root)
    assert "attnlab/modeling_elita.py" in member_files('{"model": "elita_attention"}', root)
    assert "examples/retention/retention.py" in member_files('{"model": "retention:Retention"}', root)
    assert member_files('{"file": "attnlab/modeling_elita.py", "model": "llama", "x": "delitas"}', root) == []


@pytest.mark.parametrize("spec, message", [
    ("results/missing.json", "no record results/missing.json"),
    ('results/speed.json section="Nope"', "no heading 'Nope'"),
    ('results/speed.json table="Nope"', "no paragraph starting with 'Nope'"),
    ("results/speed.json plot=results/nope.png", "no plot results/nope.png"),
    ("results/speed.json colour=red", "unknown render option 'colour=red'"),
])
def test_a_bad_block_is_an_error_naming_it(repo, spec, message):
    with pytest.raises(RenderError, match=re.escape(message)):
        render(repo, block(spec))


def test_verdicts_read_their_figures_from_the_records(repo):
    (repo / "results" / "verdicts.json").write_text(json.dumps({"verdicts": [
        {"seed": "001", "claim": "faster", "verdict": "Yes",
         "evidence": [{"record": "results/speed.json", "text": "{rate:.1f} tokens/s, {half:.2f}x",
                       "values": {"rate": "medians/model=elita,kind=train/tokens_per_s",
                                  "half": {"ratio": ["medians/0/tokens_per_s", "medians/1/tokens_per_s"]}}}]}]}))
    out = render(repo, block("results/verdicts.json"))
    assert "| 001 | faster | **Yes** | 10.0 tokens/s, 0.50x ([record](results/speed.md)) |" in out
    (repo / "results" / "verdicts.json").write_text(json.dumps({"verdicts": [
        {"seed": "001", "claim": "c", "verdict": "v",
         "evidence": [{"record": "results/speed.json", "text": "{x}", "values": {"x": "medians/model=gpt/tokens"}}]}]}))
    with pytest.raises(RenderError, match="0 list items with model=gpt"):  # no such model
        render(repo, block("results/verdicts.json"))


def test_report_check_fails_on_a_stale_page_and_report_fixes_it(repo, capsys):
    (repo / "README.md").write_text(block("results/llama.json"))
    assert report.main(["--check", "--root", str(repo)]) == 1
    assert "README.md: differs from its records" in capsys.readouterr().out
    assert report.main(["--root", str(repo)]) == 0
    assert report.main(["--check", "--root", str(repo)]) == 0


def test_report_outside_a_checkout_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--root", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is not an attnlab checkout" in capsys.readouterr().err


def test_block_options_are_parsed_with_quotes():
    assert Block.parse('results/a.json section="Two words" plot=results/a.png', Path("p.md")) == Block(
        "results/a.json", section="Two words", plot="results/a.png")


# Figures on the pages that are not measurements: the seeds' own claims, code defaults and thresholds. Anything else
# that looks like a measured figure (a ratio, a time, a share, a 3-decimal loss) must come from a render block.
NOT_MEASURED = {
    "docs/benchmarks.md": {"20%"},  # the subnormal check's threshold
    "docs/mqar.md": {"0.99"},  # the calibration target and early stop
    "docs/subnormals.md": {"20 %"},  # the same threshold
    "docs/timeseries.md": {"20 %", "0.15"},  # the default test share; a statsmodels version
    "docs/workbench.md": {"5%", "900 s", "1.15"},  # the demo's warmup and time limit; an accelerate version
    "docs/members/depth_recurrent.md": {"1.2271", "0.025", "0.005"},  # the seed's claimed bits/byte; defaults
    "docs/members/evolving.md": {"99%", "5.39", "99.8%", "0.85"},  # the seed's claims; the default decay
    "docs/members/vqlnmlp.md": {"0.01"},  # the randn position code's scale
}
FIGURE = re.compile(r"(?<![\w.=/-])(\d+(?:\.\d+)?x|\d+\.\d{2,}|\d[\d,.]*\s?(?:ms|MB|GB|s|min|tokens/s|%))(?![\w])")
VERSION = re.compile(r"(?:transformers|torch|accelerate|statsmodels|lm_eval|onnxruntime|Python) \d+(?:\.\d+)+")


def hand_typed_figures(text: str) -> list[str]:
    text = report.BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"(\d(?:\.\d+)*)((?:, | and | or |/)\d(?:\.\d+)+)+", r"\1", text)  # "5.23 and 5.24" lists
    text = VERSION.sub("", re.sub(r"(\d\.\d+)(, | and | or |/)(\d\.\d+)", r"\1", text))
    text = re.sub(r"\b5\.2[34]\b", "", text)  # transformers releases named alone ("5.24 renamed ...")
    text = re.sub(r"\b2\.13\b", "", text)  # the torch release the records name
    return FIGURE.findall(text)


def test_pages_type_no_measured_figures_outside_render_blocks():
    offenders = {}
    for page in Renderer(REPO).pages():
        name = page.relative_to(REPO).as_posix()
        extra = sorted(set(hand_typed_figures(page.read_text())) - NOT_MEASURED.get(name, set()))
        if extra:
            offenders[name] = extra
    assert not offenders, f"figures typed by hand (put them in a render block of their record): {offenders}"


def test_the_figure_check_sees_a_typed_ratio():
    assert hand_typed_figures("elita trains 3.15x faster; loss 1.928 in 12 ms") == ["3.15x", "1.928", "12 ms"]
    assert hand_typed_figures("<!-- render: results/a.json -->\n3.15x\n<!-- /render -->\n`1.25x` and transformers 5.24") == []
