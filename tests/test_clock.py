"""The one clock of leases (app.clock): a consumer's offset from Redis's clock is what its host's clock is off by,
never how long one reading of Redis's TIME happened to take."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import pytest
import redis

from app import clock

# Keeps Redis busy for ARGV[1] milliseconds, as a long script or command of another client would.
BUSY_SCRIPT = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) >= tonumber(ARGV[1]) * 1000 then return 1 end
end
"""


def test_a_reading_made_while_redis_was_busy_is_not_taken_for_clock_skew(private_redis, monkeypatch):
    """On Redis's own host there is no skew. A reading sent while Redis ran something else for a second came back
    a second later: taken alone, it put this host's clock half a second behind, and every lease, start and end this
    consumer wrote half a second late (seen as jobs that waited 0.41 s more behind a recycled worker)."""
    monkeypatch.setattr(clock, "_offset", 0.0)
    conn = redis.Redis.from_url(private_redis.url)
    conn.ping()  # connected: only Redis's stall is in the reading
    busy = threading.Thread(target=redis.Redis.from_url(private_redis.url).eval, args=(BUSY_SCRIPT, 0, 1000))
    busy.start()
    time.sleep(0.1)  # the script runs: the next command waits for its end
    began = time.monotonic()
    offset = clock.sync(conn)
    stalled = time.monotonic() - began
    busy.join()
    assert stalled > 0.5, f"the reading took {stalled:.2f} s: Redis was not busy while it was made"
    assert offset == 0.0 and clock.offset() == 0.0, f"a stalled reading moved this host's clock by {offset:.3f} s"


def test_a_host_whose_clock_is_ahead_of_redis_measures_it(private_redis):
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.skip("faketime (Debian package faketime) is not installed")
    measure = ("import redis, sys; from app import clock; "
               "print(clock.sync(redis.Redis.from_url(sys.argv[1])))")
    ahead = subprocess.run([faketime, "-f", "+90s", sys.executable, "-c", measure, private_redis.url],
                           capture_output=True, text=True, timeout=60, check=True)
    assert abs(float(ahead.stdout) + 90) < 1, ahead.stdout
