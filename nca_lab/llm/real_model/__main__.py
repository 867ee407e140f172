import sys

from nca_lab.llm.real_model.pipeline import main

sys.exit(main())
