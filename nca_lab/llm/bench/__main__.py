"""``python -m nca_lab.llm.bench``: the benchmark's command line (:func:`nca_lab.llm.bench.run.main`)."""

import sys

from nca_lab.llm.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
