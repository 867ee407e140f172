"""``python -m nca_lab.llm.scale_run``: the scale run's command line (:func:`nca_lab.llm.scale_run.run.main`)."""

import sys

from nca_lab.llm.scale_run.run import main

if __name__ == "__main__":
    sys.exit(main())
