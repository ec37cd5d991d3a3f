import os
import sys

# The spawned ranks import the helpers (_dist, _policies, the test modules) by plain name.
sys.path.insert(0, os.path.dirname(__file__))

import _policies  # noqa: F401  (registers the rt_test_* policies)
