"""The pipeline benchmark's CPU-by-phase split (``benchmarks/pipeline_overhead.phase_cpu``)."""

from __future__ import annotations

import pytest

from benchmarks.pipeline_overhead import phase_cpu


def test_each_interval_counts_for_the_phase_at_its_midpoint():
    # the caller speaks 1-3 s, the bot answers 3.5-4 s; 0.1 s samples, the loop burning 1 ms in
    # each quiet interval, 4 ms while the caller speaks, 2 ms at the turn's end, 8 ms while the
    # bot speaks; the phone's own work (0.5 ms an interval while the caller speaks) is left out
    cost = {"quiet": 0.001, "caller speaking": 0.0045, "turn end": 0.002, "bot speaking": 0.008}
    phone = {"caller speaking": 0.0005}

    def truth(t: float) -> str:
        if 1.0 <= t < 3.0:
            return "caller speaking"
        if 3.0 <= t < 3.5:
            return "turn end"
        if 3.5 <= t < 4.0:
            return "bot speaking"
        return "quiet"

    samples, cpu, own = [], 0.0, 0.0
    for k in range(51):
        t = k * 0.1
        samples.append((t, cpu, own))
        kind = truth(t + 0.05)
        cpu += cost[kind]
        own += phone.get(kind, 0.0)
    says = [(1.0, 3.0)]
    bot_audio = [(3.5 + 0.1 * i, 3.6 + 0.1 * i) for i in range(5)]
    out = phase_cpu(samples, says, bot_audio)

    assert set(out) == {"quiet", "caller speaking", "turn end", "bot speaking"}
    assert out["caller speaking"]["wall_share"] == pytest.approx(0.4)
    assert out["turn end"]["wall_share"] == pytest.approx(0.1)
    assert out["bot speaking"]["wall_share"] == pytest.approx(0.1)
    assert out["quiet"]["wall_share"] == pytest.approx(0.4)
    assert out["caller speaking"]["cpu_percent_of_core"] == pytest.approx(4.0)  # 4 ms / 100 ms
    assert out["bot speaking"]["cpu_percent_of_core"] == pytest.approx(8.0)
    assert out["quiet"]["cpu_percent_of_core"] == pytest.approx(1.0)
    # the parts add up to the call's average (the loop's CPU less the phone's, over the call)
    total = sum(p["part_of_call_percent"] for p in out.values())
    last_cpu, last_own = samples[-1][1:]
    assert total == pytest.approx(100.0 * (last_cpu - last_own) / 5.0)
    assert list(out)[0] == "caller speaking"  # ordered by CPU spent


def test_after_the_answer_the_line_is_quiet_again():
    # an utterance that is never answered leaves its turn end open to the end of the call
    samples = [(t / 10, t * 0.001, 0.0) for t in range(31)]
    out = phase_cpu(samples, [(0.0, 1.0)], [])
    assert out["turn end"]["wall_share"] == pytest.approx(2 / 3)
    out = phase_cpu(samples, [(0.0, 1.0)], [(1.5, 2.0)])
    assert out["turn end"]["wall_share"] == pytest.approx(0.5 / 3)
    assert out["quiet"]["wall_share"] == pytest.approx(1.0 / 3)


def test_the_sampler_thread_reads_the_loop_threads_cpu_not_its_own():
    """``LoopCpuSampler`` samples the CPU clock of the thread that created it (the event loop's)
    from its own thread: busy work there shows in the samples, the sleep after it does not,
    and the sampler's own CPU is returned apart."""
    import time

    from benchmarks.pipeline_overhead import PHASE_SAMPLE_SECS, LoopCpuSampler

    class Phone:
        own_cpu_secs = 0.25

    sampler = LoopCpuSampler(Phone())
    cpu0 = time.thread_time()
    sampler.start()
    end = time.monotonic() + 0.4
    while time.monotonic() < end:  # burn 0.4 s of this thread's CPU
        pass
    burnt = time.thread_time() - cpu0
    time.sleep(0.4)
    samples, own = sampler.finish()
    assert 6 <= len(samples) <= 10  # one every PHASE_SAMPLE_SECS over ~0.8 s
    gaps = [b[0] - a[0] for a, b in zip(samples, samples[1:], strict=False)]
    assert all(g == pytest.approx(PHASE_SAMPLE_SECS, abs=0.08) for g in gaps)
    seen = samples[-1][1] - samples[0][1]
    assert seen == pytest.approx(burnt, abs=0.12)  # this thread's work, the sleep adds nothing
    assert all(p == 0.25 for _, _, p, _ in samples)
    assert 0.0 <= own < 0.1
    # the loop thread's sleeps: at least the one above (``time.sleep``: a voluntary switch)
    assert samples[-1][3] - samples[0][3] >= 1


def test_wake_ups_a_second_by_phase_from_the_loops_sleeps():
    """With the loop thread's sleeps counted in the samples (``thread_sleeps``), each phase
    gets its wake-ups a second: 50 a second while the caller speaks, 10 while quiet."""
    import threading

    from benchmarks.pipeline_overhead import thread_sleeps

    samples, sleeps = [], 0.0
    for k in range(31):
        t = k * 0.1
        samples.append((t, 0.001 * k, 0.0, sleeps))
        sleeps += 5 if 1.0 <= t + 0.05 < 2.0 else 1
    out = phase_cpu(samples, [(1.0, 2.0)], [(2.0, 2.05)])
    assert out["caller speaking"]["wakeups_per_sec"] == pytest.approx(50.0)
    assert out["quiet"]["wakeups_per_sec"] == pytest.approx(10.0)
    assert "wakeups_per_sec" not in phase_cpu([s[:3] for s in samples], [(1.0, 2.0)], [])["quiet"]
    assert thread_sleeps(threading.get_native_id()) >= 0
    assert thread_sleeps(-1) != thread_sleeps(-1)  # no such thread: NaN
