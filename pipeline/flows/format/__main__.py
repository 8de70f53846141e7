"""``python -m pipeline.flows.format validate PATH`` or ``python -m pipeline.flows.format schema``.

``validate`` is the same as ``stepcall flows validate``; ``schema`` rewrites ``flow.schema.json``
from ``schema.py``.
"""

from __future__ import annotations

import sys

from pipeline.flows.format.cli import validate_command
from pipeline.flows.format.schema import JSON_SCHEMA_PATH, json_schema_text


def main(argv: list[str]) -> int:
    """Run one sub-command; return the exit status."""
    if len(argv) == 2 and argv[0] == "validate":
        return validate_command(argv[1])
    if argv == ["schema"]:
        JSON_SCHEMA_PATH.write_text(json_schema_text(), encoding="utf-8")
        print(f"wrote {JSON_SCHEMA_PATH}")
        return 0
    print("usage: python -m pipeline.flows.format validate FILE|DIR | schema", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
