"""What every subcommand gets: settings read once, a Redis client, exit codes."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from webhooks.store import Store

__all__ = ["EXIT_INVALID", "EXIT_NOT_FOUND", "EXIT_UNAVAILABLE", "Context", "print_json"]

EXIT_NOT_FOUND = 1
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3


@dataclass(frozen=True, slots=True)
class Context:
    settings: Settings
    store: Store


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
