"""Leave a mark in an image layer for later runs: append MARKER to FILE and create
FILE's directory/sbx-attack-MARKER.  Reports an escape when a mark left by an
earlier run is there (the test runs it twice, in two sandboxes).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

path, marker = sys.argv[1], sys.argv[2].encode()
new = os.path.join(os.path.dirname(path), "sbx-attack-" + marker.decode())
with open(path, "rb") as f:
    before = f.read()
if marker in before or os.path.exists(new):
    result("image_write", True, f"a mark from an earlier run persisted in {path}")
    sys.exit(0)
done = []
try:
    with open(path, "ab") as f:
        f.write(marker)
    done.append("appended")
except OSError as exc:
    done.append(f"append {ename(exc.errno or 0)}")
try:
    with open(new, "wb") as f:
        f.write(marker)
    done.append("created")
except OSError as exc:
    done.append(f"create {ename(exc.errno or 0)}")
result("image_write", False, "no earlier mark; " + ", ".join(done))
