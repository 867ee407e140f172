"""``python -m nca_lab.llm.study``: the study's command line (:func:`nca_lab.llm.study.pipeline.main`)."""

import sys

from nca_lab.llm.study.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
