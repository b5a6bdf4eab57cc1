"""capitu/study/jobs.py: which GPU each shard of `capitu study --jobs N` gets (the end-to-end run is in
test_study.py: --jobs 2 against the study run whole)."""

import torch

from capitu.study.jobs import visible_gpus


def test_visible_gpus_follow_cuda_visible_devices_or_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_gpus() == ["3", "5"]  # the ids the user gave, so each child sees one of them
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus() == []
