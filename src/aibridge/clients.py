"""Which AI client is calling, guessed from its headers (for records and metrics)."""

# Checked in order against the lowercased User-Agent; the first match wins.
_USER_AGENT_MARKS: tuple[tuple[str, str], ...] = (
    ("claude-cli", "claude-code"),
    ("claude-code", "claude-code"),
    ("claude", "claude-code"),
    ("codex", "codex"),
    ("zed/", "zed"),
    ("cursor", "cursor"),
    ("kilo-code", "kilo-code"),
    ("roo-code", "roo-code"),
    ("cline", "cline"),
    ("copilot", "copilot"),
    ("anthropic/python", "anthropic-python"),
    ("anthropic/js", "anthropic-js"),
    ("openai/python", "openai-python"),
    ("openai/js", "openai-js"),
    ("curl/", "curl"),
)


def guess_client(user_agent: str, has_cursor_header: bool = False) -> str:
    """A short client name: ``claude-code``, ``codex``, ``cursor``, ``zed``, ... or ``unknown``."""
    if has_cursor_header:
        return "cursor"
    lowered = user_agent.lower()
    for mark, name in _USER_AGENT_MARKS:
        if mark in lowered:
            return name
    return "unknown"
