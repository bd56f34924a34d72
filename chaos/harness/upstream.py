#!/usr/bin/env python3
"""The provider behind the gateway's `dancu` service, run as its own process on the bridge
address: the end-to-end test's upstream (tests/e2e/traffic.py `Upstream`: 200 and a small JSON
body to every GET, HTTP/1.1 keep-alive), until killed.

Usage: upstream.py HOST PORT
"""

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))
from traffic import Upstream  # noqa: E402

if __name__ == "__main__":
    with Upstream(sys.argv[1], int(sys.argv[2])):
        threading.Event().wait()
