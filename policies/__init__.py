"""The packaged Rego policies and their data (an OPA bundle layout)."""

from pathlib import Path

PACKAGED_POLICIES = Path(__file__).parent
