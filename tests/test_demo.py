"""README command 1: `aibridge demo` shows failover, exhaustion and recovery."""

import io
import re

from rich.console import Console

from aibridge.demo import run_demo


def test_demo_shows_failover_exhaustion_and_recovery() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, force_terminal=False)
    assert run_demo(console) == 0
    text = out.getvalue()
    cells = r"│ (\d) │ ([^│]+)│ ([^│]+)│ ([^│]+)│ ([^│]+)│ ([^│]+)│"
    rows = {m[0]: m for m in re.findall(cells, text)}
    # 1: both bad keys are tried, then the healthy one serves.
    assert rows["1"][2].strip() == "200"
    assert rows["1"][3].strip() == "rate-limited > revoked > healthy"
    assert rows["1"][4].strip() == "3"
    # 2: the bad keys are cooling: straight to the healthy one.
    assert rows["2"][3].strip() == "healthy"
    # 4: every key cooling: a 429 that says when the first key recovers (2 s cooldown).
    assert rows["4"][2].strip() == "429"
    assert rows["4"][5].strip() in ("retry-after: 1s", "retry-after: 2s")
    # 5: after the cooldown the first key serves again, by itself.
    assert rows["5"][2].strip() == "200"
    assert rows["5"][3].strip() == "rate-limited"
    # The usage was recorded and reported; no key value was printed.
    assert "recorded usage" in text
    assert "sk-demo-healthy-key-000000003" not in text
