"""What the cohort worker (a training job) and the kit that starts and follows it agree on.

Layout under the ML root (`/opt/ml` in a SageMaker training job):
- `input/data/model/`: a kit artifact (what `kit upload` stores: manifest.json and the model files).
- `input/data/slides/`: the slides, as files and folders (a multi-file slide is one unit).
- `input/data/cohort/cohort.jsonl` (optional channel): one JSON object a line,
  `{"slide": PATH relative to the slides channel, "slide_id": ID or null, "slide_mpp": um/px or null,
  "bulk_rna": PATH relative to the cohort channel of a bulk_rna.json or null}`; when present the worker
  runs exactly these slides, else it lists the slides channel itself.
- `input/config/hyperparameters.json`: the slide options (model_code.slides.options), string values.
- `input/config/resourceconfig.json`: `current_host`, `hosts`.
- `checkpoints/`: outputs (`<slide_id or slide path without suffix><format suffix>`) and
  `status/<host>.jsonl`, one line per slide outcome: `slide`, `status` (`done`/`failed`), `reason`, `tiles`,
  `seconds`; synced to `CheckpointConfig.S3Uri` while the job runs. A restarted job appends: a slide's last
  line is its outcome (a failed slide is tried again by a restart). `.NAME.partial` files are outputs being
  published (copied, then renamed to NAME): never complete, to be ignored.
- `output/failure`: why the job failed, when it failed as a whole.
"""

from __future__ import annotations

MODEL_CHANNEL = "model"
SLIDES_CHANNEL = "slides"
COHORT_CHANNEL = "cohort"
COHORT_FILE = "cohort.jsonl"
STATUS_DIR = "status"
CHECKPOINTS = "checkpoints"

DONE, FAILED = "done", "failed"

# One log line per slide outcome, e.g. `cohort-progress: slides_done=3 slides_failed=1 slides_remaining=6
# tiles_per_s=412.5`; MetricDefinitions turn it into CloudWatch metrics.
PROGRESS_PREFIX = "cohort-progress:"
METRIC_DEFINITIONS = [
    {"Name": "cohort:slides_done", "Regex": r"slides_done=([0-9]+)"},
    {"Name": "cohort:slides_failed", "Regex": r"slides_failed=([0-9]+)"},
    {"Name": "cohort:slides_remaining", "Regex": r"slides_remaining=([0-9]+)"},
    {"Name": "cohort:tiles_per_s", "Regex": r"tiles_per_s=([0-9.]+)"},
]


def progress_line(done: int, failed: int, remaining: int, tiles_per_s: float) -> str:
    """The log line METRIC_DEFINITIONS read."""
    return (
        f"{PROGRESS_PREFIX} slides_done={done} slides_failed={failed} slides_remaining={remaining} "
        f"tiles_per_s={tiles_per_s:.1f}"
    )
