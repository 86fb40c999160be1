"""``bert-finetune worker trainer`` whose runs volume stalls while the final model is saved.

Saving a real model to a network volume takes minutes; here ``SLOW_FINAL_SAVE_SECONDS`` of
sleep stand in for it, so a test can partition the worker while it is saving. Only the
final save is slowed (the Trainer's own checkpoint saves pass ``_internal_call=True``).
This script patches the Trainer and hands over to the real CLI entry point, so the worker
under test is the production one.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from transformers import Trainer

STALL_SECONDS = float(os.environ["SLOW_FINAL_SAVE_SECONDS"])
_save_model = Trainer.save_model


def _save_model_on_a_stalling_volume(self: Any, *args: Any, **kwargs: Any) -> Any:
    if not kwargs.get("_internal_call"):
        time.sleep(STALL_SECONDS)
    return _save_model(self, *args, **kwargs)


Trainer.save_model = _save_model_on_a_stalling_volume

if __name__ == "__main__":
    from bert_finetune.cli import run

    sys.argv = ["bert-finetune", "worker", "trainer"]
    run()
