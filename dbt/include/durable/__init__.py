"""Where dbt finds the dbt_durable macros.

In a wheel, the macros are installed next to this file. In a source checkout (editable
install) they live in the repository's top-level ``macros/``, and the repository root is the
dbt package, so that one folder stays the single source.
"""

import os

_HERE = os.path.dirname(__file__)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))

PACKAGE_PATH = _HERE if os.path.isdir(os.path.join(_HERE, "macros")) else _ROOT
