"""quantforge: declarative GGUF quant recipes, exact size and fit planning, build, evaluate, publish.

The package is cut along the data flow: ``recipe`` → ``inventory`` → ``plan`` → ``fit`` →
``build`` → ``evaluate`` → ``publish``. ``catalogue`` alone holds quant-type facts.
Public names are re-exported lazily so importing the package stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
