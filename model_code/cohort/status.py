"""The host's record of slide outcomes, `checkpoints/status/HOST.jsonl` (synced to S3 as it grows, restored
into a restarted job): one line per outcome, appended and flushed to disk at once; a restart appends, and a
slide's last line is its outcome. Beside it, the progress lines the job's MetricDefinitions read."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from model_code.cohort.contract import DONE, FAILED, STATUS_DIR, progress_line

log = logging.getLogger("optimus.cohort")


@dataclass
class StatusLog:
    path: Path
    share: list[str]  # the host's slides
    outcomes: dict[str, str] = field(default_factory=dict)  # slide -> done / failed, this run and earlier ones
    tiles: int = 0  # this run's
    seconds: float = 0.0

    @classmethod
    def open(cls, checkpoints: Path, host: str, share: list[str]) -> StatusLog:
        path = checkpoints / STATUS_DIR / f"{host}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        status = cls(path, share)
        if path.exists():
            text = path.read_text()
            if text and not text.endswith("\n"):
                with path.open("a") as file:
                    file.write("\n")  # after a line cut short, the next starts on its own
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    status.outcomes[row["slide"]] = row["status"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short when the job was stopped
        return status

    def record(self, slide: str, status: str, reason: str | None, tiles: int, seconds: float) -> None:
        line = {"slide": slide, "status": status, "reason": reason, "tiles": tiles, "seconds": round(seconds, 3)}
        with self.path.open("a") as file:
            file.write(json.dumps(line) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self.outcomes[slide] = status
        self.tiles += tiles
        self.seconds += seconds
        self.progress()

    def progress(self) -> None:
        outcomes = [self.outcomes.get(slide) for slide in self.share]
        done, failed = outcomes.count(DONE), outcomes.count(FAILED)
        rate = self.tiles / self.seconds if self.seconds > 0 else 0.0
        print(progress_line(done, failed, len(outcomes) - done - failed, rate), flush=True)
