"""Entry point of geodino's SageMaker jobs: SageMaker runs it on every host (see geodino/sagemaker_host.py).

It is started from the job's source folder (this repository), not an installed package.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform"))

from geodino.cli import run_entry  # noqa: E402
from geodino.launch.sagemaker_host import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry("sagemaker_entry.py", main))
