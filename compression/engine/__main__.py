"""``python -m compression.engine MODEL.onnx --recipe NAME ...``"""

import sys

from compression.engine.cli import main

sys.exit(main())
