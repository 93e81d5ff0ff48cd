"""``python -m gpt_oss_native.generate MODEL -p PROMPT ...``: the same as ``gpt-oss-native generate``."""

from __future__ import annotations

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
