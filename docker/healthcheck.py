"""Container health probe: exit 0 when the service answers 200 on a path, 1 otherwise.

    python /usr/local/bin/frlie-healthcheck            # GET /healthz (liveness, the image's HEALTHCHECK)
    python /usr/local/bin/frlie-healthcheck /readyz    # readiness: model loaded and warmed up

The slim image has no curl or wget, so this uses the standard library only. It asks the port the
server binds (FRLIE_PORT, default 8000) on the loopback interface.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8000
TIMEOUT_S = 4.0  # below the HEALTHCHECK --timeout, so a hung server is reported, not killed


def probe(path: str, port: int, timeout: float = TIMEOUT_S) -> bool:
    """True when GET http://127.0.0.1:<port><path> answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):  # refused, timed out, HTTP error status
        return False


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    port = int(os.environ.get("FRLIE_PORT") or DEFAULT_PORT)
    healthy = probe(path, port)
    if not healthy:
        print(f"unhealthy: GET {path} on port {port} did not answer 200", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
