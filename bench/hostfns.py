"""Host functions for the blocking-work benchmark: a blocking call, as a library would make one."""

from __future__ import annotations

import time

from runtime.hostfn import host_function


@host_function("nap", pool="io")
def nap(seconds: float) -> bool:
    time.sleep(seconds)  # blocks its pool thread, never the event loop
    return True
