"""The benchmark suite from a checkout, without installing the console script: same as `attnlab bench ...`.

    python scripts/bench.py speed --presets tiny small --compile      (from the repo root; see docs/notes/bench.md)
"""

from attnlab.workbench.bench import main

if __name__ == "__main__":
    main()
