"""ProgressReporter: the training thread never waits on Temporal; nothing is dropped on exit."""

from __future__ import annotations

import time

from temporalio.testing import ActivityEnvironment

from services.trainer.activities.progress import ProgressReporter
from services.trainer.activities.watchdog import PhaseWatchdog
from shared.types import TrainingProgress

SLOW_SIGNAL_SECONDS = 0.5


def test_training_thread_never_waits_for_a_slow_signal() -> None:
    signalled: list[TrainingProgress] = []
    heartbeats: list[dict] = []

    def slow_signal(progress: TrainingProgress) -> None:
        time.sleep(SLOW_SIGNAL_SECONDS)  # a server that is slow or away
        signalled.append(progress)

    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])

    def training() -> float:
        reporter = ProgressReporter(
            TrainingProgress(run_id="r"), signal=slow_signal, interval=0.05, signal_interval=60
        )
        with reporter:
            started = time.monotonic()
            # What the training callback does at each step and checkpoint.
            reporter.update(phase="training", global_step=1, max_steps=10)
            for step in range(2, 6):
                reporter.update(global_step=step)
            reporter.update(latest_checkpoint="/runs/r/checkpoints/attempt-1/checkpoint-5")
            reporter.heartbeat_now()
            reporter.signal_soon()
            blocked = time.monotonic() - started
            time.sleep(2 * SLOW_SIGNAL_SECONDS)
            reporter.update(phase="succeeded")
        return blocked

    blocked = env.run(training)
    assert blocked < SLOW_SIGNAL_SECONDS / 5
    assert heartbeats[-1]["latest_checkpoint"].endswith("checkpoint-5")
    assert any(p.latest_checkpoint and p.global_step == 5 for p in signalled)
    # The final phase change is signalled on the way out, not lost to the thread stopping.
    assert signalled[-1].phase == "succeeded"


def test_a_hung_step_stops_heartbeats_and_fails_liveness(monkeypatch) -> None:
    from shared import health

    monkeypatch.setattr(health, "_fatal_reason", None)
    heartbeats: list[dict] = []
    stalls: list[str] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])

    def hung_training() -> ProgressReporter:
        reporter = ProgressReporter(
            TrainingProgress(run_id="r"),
            interval=0.05,
            watchdog=PhaseWatchdog({"training": 0.5}),
            on_stall=lambda reason: (stalls.append(reason), health.report_fatal(reason)),
        )
        with reporter:
            reporter.update(phase="loading_model")
            time.sleep(0.8)  # a phase without a limit never counts as a stall
            assert not reporter.stalled
            for step in range(1, 4):
                reporter.update(phase="training", global_step=step, max_steps=100)
                time.sleep(0.2)
            time.sleep(1.0)  # step 3 never finishes
            beats_at_stall = len(heartbeats)
            time.sleep(0.5)
            assert len(heartbeats) == beats_at_stall, "a stalled attempt kept heartbeating"
        return reporter

    reporter = env.run(hung_training)
    assert reporter.stalled and len(stalls) == 1 and "step 3" in stalls[0]
    alive, why = health.WorkerHealth().alive()
    assert not alive and "step 3" in why


def test_phase_changes_in_quick_succession_are_signalled_once_spaced_and_the_last_at_once() -> None:
    """A short run passes through its phases faster than the spacing: they coalesce into
    one later signal instead of a workflow task each, and the final phase still goes out
    on the way out, at once."""
    signalled: list[TrainingProgress] = []
    env = ActivityEnvironment()

    def short_run() -> None:
        reporter = ProgressReporter(
            TrainingProgress(run_id="r"),
            signal=signalled.append,
            interval=60,
            signal_interval=600,
            min_signal_spacing=600,  # nothing is spaced enough before the exit
        )
        with reporter:
            for phase in ("loading_data", "loading_model", "tokenizing", "training"):
                reporter.update(phase=phase)
            reporter.update(latest_checkpoint="/runs/r/checkpoints/attempt-1/checkpoint-5")
            reporter.signal_soon()
            reporter.update(phase="succeeded")

    env.run(short_run)
    assert [p.phase for p in signalled] == ["starting", "succeeded"]
    assert signalled[-1].latest_checkpoint.endswith("checkpoint-5")


def test_a_requested_signal_goes_out_once_the_spacing_has_passed() -> None:
    signalled: list[TrainingProgress] = []
    env = ActivityEnvironment()

    def run() -> None:
        reporter = ProgressReporter(
            TrainingProgress(run_id="r"),
            signal=signalled.append,
            interval=60,
            signal_interval=600,
            min_signal_spacing=0.2,
        )
        with reporter:
            reporter.update(phase="training")
            deadline = time.monotonic() + 60
            while len(signalled) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # waits for an event, not for a time: see the assertion
            reporter.update(phase="succeeded")

    env.run(run)
    assert [p.phase for p in signalled] == ["starting", "training", "succeeded"]
