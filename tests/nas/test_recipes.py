"""Training recipes against weight-sharing interference: in-place distillation and the largest-subnet warm-up."""
from __future__ import annotations

import json

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from nas.cost_model import extreme_arch
from nas.data.loaders import make_loader
from nas.train.arch_samplers import build_sampler
from nas.train.config import TrainConfig
from nas.train.supernet import train_supernet
from nas.train.loop import load_training_data
from search_spaces import load_space
from supernets.supernet import Supernet

RUN = dict(data="synthetic", epochs=1, batch_size=16, log_every=1, eval_random=0, seed=5, lr=1e-3)


def test_warmup_trains_the_largest_subnet_alone_then_the_sampler():
    space = load_space("tiny-32")
    plain, warm = build_sampler("uniform", space, 2), build_sampler("uniform", space, 2, warmup_largest_steps=4)
    largest = extreme_arch(space, largest=True)
    assert [warm.archs(t) for t in range(4)] == [[largest]] * 4
    assert [warm.archs(t) for t in range(4, 9)] == [plain.archs(t) for t in range(4, 9)]


def test_distillation_step_is_labels_for_the_teacher_and_its_soft_predictions_for_the_student(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), distill=True, stop_after=1, **RUN)
    train_supernet(cfg)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    space = load_space("tiny-32")
    teacher, student = extreme_arch(space, largest=True), build_sampler("uniform", space, cfg.seed).archs(0)[0]
    assert record["archs"] == [teacher.hash, student.hash]

    # the loss of step 1, recomputed from the same initial weights and the same first batch
    data, _ = load_training_data(cfg, space.img_size, space.num_classes, 1)
    images, labels = next(iter(make_loader(data.train, cfg.batch_size, train=True, seed=cfg.seed, epoch=0)))
    torch.manual_seed(cfg.seed)
    supernet = Supernet(space, num_classes=data.num_classes).train()
    with torch.no_grad():
        teacher_logits, student_logits = supernet(images, teacher), supernet(images, student)
    expected = (LabelSmoothingCrossEntropy(cfg.label_smoothing)(teacher_logits, labels)
                + SoftTargetCrossEntropy()(student_logits, teacher_logits.softmax(dim=-1))) / 2
    assert record["loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_with_a_sampler_that_draws_the_teacher_runs_it_once(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), distill=True, sampler="sandwich", stop_after=2, **RUN)
    train_supernet(cfg)
    space = load_space("tiny-32")
    largest, smallest = extreme_arch(space, largest=True), extreme_arch(space, largest=False)
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        archs = json.loads(line)["archs"]
        assert archs[:2] == [largest.hash, smallest.hash] and len(archs) == 3


def test_warmup_longer_than_the_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--warmup-largest"):
        TrainConfig(out=str(tmp_path), epochs=2, warmup_largest=3).validate()
