import torch

from chameleon_lite.train import metrics


def test_peak_flops_counts_the_fastest_window_not_one_slowed_by_other_work(monkeypatch):
    """The MFU denominator on a shared machine: a GEMM that takes 1 ms (10 ms while another process holds the cores,
    here the whole first window) measures as 2 n^3 / 1 ms, not an average dragged down by the slow window. A fake
    clock makes it exact."""
    clock = {"t": 0.0, "calls": 0}
    real_mm = torch.mm

    def mm(a, b):
        clock["calls"] += 1
        clock["t"] += 0.010 if clock["calls"] <= 11 else 0.001  # the warm-up call and the first window are slow
        return real_mm(a[:2, :2], b[:2, :2])

    monkeypatch.setattr(metrics.torch, "mm", mm)
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock["t"])
    peak = metrics.measure_peak_flops(torch.device("cpu"), torch.float32, seconds=0.5, windows=5)
    assert abs(peak - 2 * 1024**3 / 0.001) / peak < 0.02
    # one window over the same slow start measures below it
    clock.update(t=0.0, calls=0)
    single = metrics.measure_peak_flops(torch.device("cpu"), torch.float32, seconds=0.5, windows=1)
    assert single < 0.9 * peak
