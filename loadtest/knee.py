"""Step load until the knee: Locust users double step by step until the p95 of answered requests passes an SLO.

    locust -f loadtest/knee.py OnnxApiUser --headless --host http://127.0.0.1:8002
    locust -f loadtest/knee.py                      # the web UI drives the same shape

The users are those of locustfile.py (429s counted apart, Retry-After honoured). Each step lasts
LOADTEST_STEP_S seconds (20); users go 1, 2, 4, ... up to LOADTEST_MAX_USERS (512). The run ends after the
first step whose p95 of /embed answers (last 10 s window) passes LOADTEST_SLO_MS (2000): that step is past the
knee, the one before it is the capacity the service can give at that SLO.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from locust import LoadTestShape

sys.path.insert(0, str(Path(__file__).resolve().parent))  # locust loads this file by path
from locustfile import OnnxApiUser, TorchApiUser  # noqa: E402,F401  (the users this shape drives)

STEP_S = float(os.environ.get("LOADTEST_STEP_S", "20"))
MAX_USERS = int(os.environ.get("LOADTEST_MAX_USERS", "512"))
SLO_MS = float(os.environ.get("LOADTEST_SLO_MS", "2000"))


class StepUntilSlo(LoadTestShape):
    def __init__(self):
        super().__init__()
        self.step = 0
        self.past_knee = False

    def tick(self):
        step = int(self.get_run_time() // STEP_S)
        if step != self.step:  # a step just ended: was it past the knee?
            entry = self.runner.stats.get("/embed", "POST")
            p95 = entry.get_current_response_time_percentile(0.95) or 0
            print(f"step {self.step}: {self.users_at(self.step)} users, p95 {p95:.0f} ms", flush=True)
            if self.past_knee or p95 > SLO_MS:
                return None
            self.step = step
        users = self.users_at(step)
        if users > MAX_USERS:
            return None
        if users == MAX_USERS:
            self.past_knee = True  # the last step: stop after it
        return users, users

    @staticmethod
    def users_at(step: int) -> int:
        return min(2**step, MAX_USERS)
