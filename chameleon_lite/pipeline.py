"""A resumable pipeline of named stages, used by `chameleon-lite quickstart`.

Each stage writes its outputs, then a marker file ``.stage-<name>.done`` holding the stage's parameters; a rerun
skips stages whose marker exists with the same parameters and reruns (after clearing) those whose parameters
changed, and every stage after one that ran again: a later stage reads what the earlier ones wrote (new tokenizers
need a new vocabulary, new shards and a new model), so its own unchanged parameters do not make it current. Stages
that are themselves resumable (tokenizer training, pretraining) are simply called again after an interruption and
continue from their own checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from chameleon_lite.files import PIPELINE, check_output_dir, write_json_atomic


@dataclasses.dataclass
class Stage:
    name: str
    fn: Callable[[], Any]
    params: dict[str, Any]
    outputs: list[str] = dataclasses.field(default_factory=list)  # cleared when params change
    resumable: bool = False  # a stage that continues from its own checkpoints when rerun


class Pipeline:
    def __init__(self, root: str, log: Callable[[str], None] = print) -> None:
        self.root = root
        self.log = log
        check_output_dir(root, PIPELINE)
        os.makedirs(root, exist_ok=True)
        claim = os.path.join(root, ".stage-pipeline")  # marks the folder as a pipeline's before any stage finishes
        if not os.path.exists(claim):
            write_json_atomic(claim, {})

    def _marker(self, name: str) -> str:
        return os.path.join(self.root, f".stage-{name}.done")

    def is_done(self, stage: Stage) -> bool:
        try:
            with open(self._marker(stage.name)) as f:
                return json.load(f).get("params") == json.loads(json.dumps(stage.params))
        except (OSError, json.JSONDecodeError):
            return False

    def run(self, stages: list[Stage]) -> dict[str, float]:
        """Run stages in order, skipping finished ones; returns the wall time of each stage run now."""
        times: dict[str, float] = {}
        upstream_ran = False  # a stage before this one ran in this call: what this one read may have changed
        for i, st in enumerate(stages, 1):
            head = f"[{i}/{len(stages)}] {st.name}"
            if not upstream_ran and self.is_done(st):
                self.log(f"{head}: done earlier, skipped")
                continue
            upstream_ran = True
            marker = self._marker(st.name)
            if os.path.exists(marker):  # parameters, or what an earlier stage wrote, changed: start this stage over
                os.remove(marker)
                for out in st.outputs:
                    if os.path.isdir(out):
                        shutil.rmtree(out)
                    elif os.path.exists(out):
                        os.remove(out)
            self.log(f"{head}: running")
            t0 = time.perf_counter()
            st.fn()
            times[st.name] = time.perf_counter() - t0
            write_json_atomic(marker, {"params": st.params, "seconds": times[st.name]})
            self.log(f"{head}: finished in {times[st.name]:.1f} s")
        return times


def stage_seconds(root: str) -> dict[str, float]:
    """Wall seconds of every finished stage of the pipeline in ``root``, from its markers."""
    times = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name.startswith(".stage-") and name.endswith(".done"):
            try:
                with open(os.path.join(root, name)) as f:
                    times[name[len(".stage-") : -len(".done")]] = float(json.load(f).get("seconds", 0.0))
            except (OSError, ValueError):
                pass
    return times
