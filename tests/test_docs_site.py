"""The documentation site builds in MkDocs' strict mode, offline: a broken link, a page missing from the nav's
files or a docstring the API reference cannot render fails the suite."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for page in ["index.html", "members/elita/index.html", "api/models/index.html", "benchmarks/index.html"]:
        assert (site / page).is_file(), page
    assert "ElitaConfig" in (site / "api" / "models" / "index.html").read_text()  # the API reference rendered
