import sys

from nca_lab.llm.online_study.pipeline import main

sys.exit(main())
