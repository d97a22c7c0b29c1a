"""Contrastive loss, label-aware targets, and fit(): smoke, determinism, resume, freezing, CLI (tiny sizes)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medxpert_utils.core import config, io, runs
from medxpert_utils.models.clip import load_clip
from medxpert_utils.training import compare as train_compare
from medxpert_utils.training import loss as contrastive
from medxpert_utils.training import schedule as lr_schedule
from medxpert_utils.training import trainer as train
from medxpert_utils.training.__main__ import main as training_main

# smoke.yaml's model sizes (hidden 32, one layer per tower, 32 px) on a 40-study synthetic set.
TINY_RUN = {"data.n_studies": 40, "data.image_size": 32, "train.batch_size": 8, "train.epochs": 2,
            "train.max_steps": 5, "train.checkpoint_every_steps": 2, "train.num_workers": 0}
DETERMINISTIC_KEYS = ("epoch", "step", "train_loss", "val_loss", "val_i2t_acc", "val_t2i_acc", "lr", "partial_epoch")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def manifest_file(tmp_path_factory, session_data_dir) -> Path:
    """One 40-study demo manifest for the module (images in the session's dataset cache)."""
    from medxpert_utils.data import sources

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDXPERT_DATA", str(session_data_dir))
        cfg = config.load("smoke", str(tmp_path_factory.mktemp("manifest") / "run"), TINY_RUN)
        frame, _ = sources.build_manifest(cfg, progress=False)
    path = tmp_path_factory.mktemp("manifest_copy") / "manifest.parquet"
    io.write_parquet(path, frame)
    return path


def make_run(tmp_path: Path, manifest_file: Path, name: str = "run", **overrides) -> config.Config:
    cfg = runs.prepare(config.load("smoke", str(tmp_path / name), {**TINY_RUN, **overrides}))
    shutil.copy(manifest_file, cfg.paths.manifest)
    return cfg


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    model, _ = load_clip(folder)
    return model.state_dict()


def _deterministic_history(result: dict) -> list[dict]:
    return [{k: h[k] for k in DETERMINISTIC_KEYS} for h in result["history"]]


# ----------------------------------------------------------------------------------------- loss


def test_clip_loss_matches_a_hand_computed_2x2_case():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: [1, 0], [0, 1]
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    logit_scale = torch.tensor(math.log(2.0))
    # logits = 2 * [[1, 0.6], [0, 0.8]]
    i2t = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
           - math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))) / 2
    t2i = (-math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
           - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))) / 2
    loss = contrastive.clip_loss(image, text, logit_scale)
    assert math.isclose(loss.item(), (i2t + t2i) / 2, rel_tol=1e-6)
    identity = contrastive.clip_loss(image, text, logit_scale, targets=torch.eye(2))
    assert math.isclose(identity.item(), loss.item(), rel_tol=1e-6)


def test_clip_loss_clamps_the_temperature_at_100():
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    at_cap = contrastive.clip_loss(image, text, torch.tensor(math.log(100.0)))
    beyond = contrastive.clip_loss(image, text, torch.tensor(math.log(1000.0)))
    assert math.isclose(at_cap.item(), beyond.item(), rel_tol=1e-6)


def test_soft_targets_make_duplicate_reports_positives():
    # rows 0 and 2 carry the same report; images 0 and 2 each match the other's copy of it. Plain
    # InfoNCE punishes that swap, the report-group targets do not (both copies are positives).
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    texts = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    targets = contrastive.label_aware_targets([7, 3, 7])
    assert torch.allclose(targets, torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]))
    scale = torch.tensor(math.log(10.0))
    hard, soft = contrastive.clip_loss(images, texts, scale), contrastive.clip_loss(images, texts, scale, targets)
    assert soft.item() < hard.item() - 0.5
    swapped_back = contrastive.clip_loss(images, texts[[2, 1, 0]], scale, targets)
    assert math.isclose(swapped_back.item(), soft.item(), rel_tol=1e-6)  # which copy matches is irrelevant


def _loss_and_grads(groups, labels, targets_fn):
    """Loss and gradients when every copy of a report has one text embedding (as a text tower gives it)."""
    torch.manual_seed(0)
    images = torch.randn(len(groups), 6, requires_grad=True)
    table = torch.randn(max(groups) + 1, 6, requires_grad=True)  # one embedding per distinct report
    loss = contrastive.clip_loss(images, table[torch.tensor(groups)], torch.tensor(math.log(10.0)),
                                 targets_fn(groups, labels))
    loss.backward()
    return loss.detach(), images.grad, table.grad


def test_report_group_targets_equal_infonce_when_duplicate_texts_share_an_embedding():
    # Exact duplicate reports give identical logits, so spreading the target over the copies changes neither
    # the loss nor any gradient: report-group targets alone only matter for reports that differ in wording but
    # normalise to one group. Same-label targets are what change training on exact duplicates.
    groups, labels = [0, 1, 0, 2, 1, 3], torch.tensor([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1]])
    plain = _loss_and_grads(groups, labels, lambda g, lab: None)
    by_group = _loss_and_grads(groups, labels, lambda g, lab: contrastive.label_aware_targets(g))
    by_labels = _loss_and_grads(groups, labels, lambda g, lab: contrastive.label_aware_targets(g, lab, 0.5))
    for a, b in zip(plain, by_group):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(plain[0], by_labels[0], atol=1e-3)
    assert not torch.allclose(plain[1], by_labels[1], atol=1e-3)


def test_label_aware_targets_weight_same_label_pairs():
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=torch.float32)
    targets = contrastive.label_aware_targets([0, 1, 2, 0], labels, label_weight=0.5)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    expected_row0 = torch.tensor([1, 0.5, 0, 1]) / 2.5
    assert torch.allclose(targets[0], expected_row0)
    assert torch.allclose(targets[2], torch.tensor([0.0, 0, 1, 0]))
    as_sets = contrastive.label_aware_targets([0, 1, 2, 0], [{"a"}, {"a"}, {"b"}, {"a"}], label_weight=0.5)
    assert torch.allclose(as_sets, targets)


def test_retrieval_top1_uses_report_groups():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # rows 0 and 2: the same report
    acc = contrastive.retrieval_top1(images, texts, [0, 1, 0])
    assert acc == {"i2t": 1.0, "t2i": 1.0}
    acc = contrastive.retrieval_top1(images, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), [0, 1, 0])
    assert acc == {"i2t": 0.0, "t2i": 0.0}


def test_retrieval_recall_matches_a_brute_force_count():
    gen = torch.Generator().manual_seed(0)
    groups = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6])
    images, texts = torch.randn(10, 4, generator=gen), torch.randn(7, 4, generator=gen)[groups]
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    sims = unit(images) @ unit(texts).t()
    for k in (1, 3, 10):
        i2t = []
        for i in range(10):  # rank distinct groups by the similarity of their (identical) texts
            by_group = {int(g): float(sims[i, j]) for j, g in enumerate(groups)}
            top = sorted(by_group, key=by_group.get, reverse=True)[:k]
            i2t.append(int(groups[i]) in top)
        t2i = []
        for g in groups.unique():
            j = int((groups == g).nonzero()[0])
            top = sims[:, j].argsort(descending=True)[:k]
            t2i.append(bool((groups[top] == g).any()))
        got = contrastive.retrieval_recall(images, texts, groups, k=k)
        assert got == {"i2t": pytest.approx(np.mean(i2t)), "t2i": pytest.approx(np.mean(t2i))}
    assert contrastive.retrieval_recall(images, texts, groups, k=10) == {"i2t": 1.0, "t2i": 1.0}


def test_selection_criteria_on_a_hand_made_history():
    history = [
        {"epoch": 1, "step": 10, "val_loss": 2.0, "val_i2t_acc": 0.30, "val_t2i_acc": 0.1, "val_i2t_r10": 0.50,
         "val_t2i_r10": 0.40},
        {"epoch": 2, "step": 20, "val_loss": 1.5, "val_i2t_acc": 0.20, "val_t2i_acc": 0.2, "val_i2t_r10": 0.70,
         "val_t2i_r10": 0.60},
        {"epoch": 3, "step": 30, "val_loss": 1.6, "val_i2t_acc": 0.30, "val_t2i_acc": 0.3, "val_i2t_r10": 0.80,
         "val_t2i_r10": 0.65},
    ]
    assert train.selection_score(history[2], "val_mean_r10") == pytest.approx(0.725)
    assert train.selection_score(history[1], "val_loss") == -1.5
    assert train.selection_score({"val_i2t_acc": float("nan")}, "val_i2t_acc") == float("-inf")
    with pytest.raises(ValueError, match="unknown selection criterion"):
        train.selection_score(history[0], "val_r1")
    table = train_compare.selection_table({"history": history, "select_by": "val_mean_r10"})
    # top-1 ties between epochs 1 and 3: the trainer keeps the first epoch that reached the best score
    assert table["epoch"].to_dict() == {"val_i2t_acc": 1, "val_loss": 2, "val_mean_r10": 3}
    assert table["used"].to_dict() == {"val_i2t_acc": False, "val_loss": False, "val_mean_r10": True}


def test_history_table_keeps_a_small_learning_rate():
    history = [{"epoch": 1, "step": 8, "train_loss": 2.78241, "lr": 5e-6}, {"epoch": 2, "step": 16,
                                                                            "train_loss": 2.74269, "lr": 5e-6}]
    table = train_compare.history_table({"history": history})
    assert list(table.index) == [1, 2] and table.loc[1, "train_loss"] == 2.7824
    assert table.loc[2, "lr"] == 5e-6  # the reference recipe's rate, not rounded away to 0


def test_accuracy_table_labels_the_untrained_base():
    metrics = {"val_i2t_acc": 0.2, "val_t2i_acc": 0.1, "val_i2t_r10": 0.6, "val_t2i_r10": 0.5}
    result = {"zero_shot": dict.fromkeys(metrics, 0.01), "best": {**metrics, "step": 40}, "best_epoch": 4,
              "zero_shot_untrained": True, "base_model": "tiny", "val_chance_i2t": 0.01, "val_chance_i2t_r10": 0.1}
    table = train_compare.accuracy_table(result)
    assert table.index[0] == "untrained (random init)" and "epoch 4, step 40" in table.index[1]
    assert table.loc[table.index[1], "image→text R@10"] == 0.6
    assert train_compare.accuracy_table(result, untrained_base=False).index[0] == "zero-shot (tiny)"
    assert table.loc["chance (random ranking)", "image→text R@10"] == 0.1


@pytest.mark.parametrize("kind,hf_name", [("cosine", "cosine"), ("linear", "linear"),
                                          ("constant", "constant_with_warmup")])
def test_lr_schedule_matches_transformers(kind, hf_name):
    from transformers import get_scheduler

    def lrs(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        out = []
        for _ in range(20):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = lrs(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule.LRSchedule(kind, 3, 20)))
    theirs = lrs(lambda opt: get_scheduler(hf_name, opt, num_warmup_steps=3, num_training_steps=20))
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_replanning_fits_the_remaining_time():
    from types import SimpleNamespace

    schedule = lr_schedule.LRSchedule("cosine", 2, 100)
    trainer = SimpleNamespace(tp=SimpleNamespace(max_minutes=1.0, epochs=50, max_steps=None), step=10,
                              batch_in_epoch=0, accum=1, steps_per_epoch=10, val_seconds=1.0, planned_steps=100,
                              schedule=schedule, elapsed=lambda: 20.0, dist=None)
    train._Trainer._replan(trainer, step_s=1.0)  # 57 - 20 = 37 s left: ~33 steps + 4 validations
    assert 40 <= trainer.planned_steps <= 45 and schedule.total == trainer.planned_steps
    before = trainer.planned_steps
    train._Trainer._replan(trainer, step_s=0.98)  # within 10%: left alone
    assert trainer.planned_steps == before
    trainer.tp.max_steps = 15
    train._Trainer._replan(trainer, step_s=0.1)
    assert trainer.planned_steps == 15


def test_plan_steps_fits_the_budget():
    assert lr_schedule.plan_steps(1000, 10, 3, 1.0, 5.0) == 30
    assert lr_schedule.plan_steps(26, 10, 3, 1.0, 5.0) == 16  # 16 steps + 2 validations = 26 s
    assert lr_schedule.plan_steps(1, 10, 3, 1.0, 5.0) == 1
    assert lr_schedule.plan_steps(20.5, 10, 3, 1.0, 5.0) == 10  # 11 steps would need a second validation (21 s)


# ------------------------------------------------------------------------------------------ fit


@pytest.mark.slow
def test_fit_smoke_writes_model_metrics_and_figure(tmp_path, manifest_file):
    cfg = make_run(tmp_path, manifest_file)
    result = train.fit(cfg, progress=False)
    saved = io.read_json(cfg.paths.metrics / "train.json")
    assert saved["steps"] == result["steps"] == 5
    assert saved["stopped_early"] == "max_steps"
    assert {"val_i2t_acc", "val_t2i_acc", "val_loss"} <= set(saved["zero_shot"])
    assert saved["zero_shot_untrained"] is True
    assert 0 < saved["val_chance_i2t"] <= saved["val_majority_i2t"] <= 1
    for entry in saved["history"]:
        assert {"epoch", "step", "train_loss", "val_loss", "val_i2t_acc", "val_t2i_acc", "val_i2t_r10", "lr",
                "pairs_per_s", "wall_s"} <= set(entry)
        assert 0.0 <= entry["val_i2t_acc"] <= 1.0 and math.isfinite(entry["train_loss"])
    assert saved["history"][-1]["partial_epoch"] and saved["history"][-1]["step"] == 5
    assert saved["best_epoch"] in {h["epoch"] for h in saved["history"]}
    picks = train_compare.selection_table(saved)
    assert picks.loc["val_i2t_acc", "used"] and saved["select_by"] == "val_i2t_acc"
    assert picks.loc["val_i2t_acc", "step"] == saved["best_step"]  # the table agrees with the trainer's choice
    assert saved["params"]["trainable"] > 0 and saved["params"]["frozen"] == 0
    assert saved["device"] == "cpu"
    assert (cfg.paths.figures / "training_curves.png").stat().st_size > 0
    model, processor = load_clip(cfg.paths.clip_finetuned)
    base, _ = load_clip(cfg.paths.clip_base)
    assert not torch.equal(model.text_projection.weight, base.text_projection.weight)
    assert sorted(p.name for p in cfg.paths.checkpoints.iterdir()) == ["last.pt", "previous.pt"]  # the last two


@pytest.mark.slow
def test_same_params_give_identical_results(tmp_path, manifest_file):
    first = train.fit(make_run(tmp_path, manifest_file, "a"), progress=False)
    second_cfg = make_run(tmp_path, manifest_file, "b")
    second = train.fit(second_cfg, progress=False)
    assert _deterministic_history(first) == _deterministic_history(second)
    assert first["zero_shot"] == second["zero_shot"]
    a, b = _weights(tmp_path / "a" / "models" / "clip"), _weights(second_cfg.paths.clip_finetuned)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_after_interrupt_ends_exactly_like_an_uninterrupted_run(tmp_path, manifest_file):
    # 28 train rows / batch 8 -> 3 steps per epoch; checkpoints at steps 2 and 4. Interrupting after
    # step 3 resumes from step 2 mid-epoch, replays step 3, crosses the epoch boundary and ends at 5.
    straight = train.fit(make_run(tmp_path, manifest_file, "straight"), progress=False)
    cfg = make_run(tmp_path, manifest_file, "resumed")
    with pytest.raises(train.TrainingInterrupted):
        train.fit(cfg, progress=False, stop_after_steps=3)
    state = torch.load(cfg.paths.checkpoints / train.CHECKPOINT_NAME, weights_only=False)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 0, 2)
    messages: list[str] = []
    resumed = train.fit(cfg, progress=False, log=messages.append)
    assert any("resuming from step 2" in m for m in messages)
    assert _deterministic_history(resumed) == _deterministic_history(straight)
    assert resumed["zero_shot"] == straight["zero_shot"] and resumed["best_epoch"] == straight["best_epoch"]
    a, b = _weights(tmp_path / "straight" / "models" / "clip"), _weights(cfg.paths.clip_finetuned)
    assert all(torch.equal(a[k], b[k]) for k in a)
    final_a = torch.load(tmp_path / "straight" / "checkpoints" / train.CHECKPOINT_NAME, weights_only=False)
    final_b = torch.load(cfg.paths.checkpoints / train.CHECKPOINT_NAME, weights_only=False)
    assert all(torch.equal(final_a["model"][k], final_b["model"][k]) for k in final_a["model"])
    # a finished run is not trained again
    messages.clear()
    again = train.fit(cfg, progress=False, log=messages.append)
    assert any("already finished" in m for m in messages)
    assert _deterministic_history(again) == _deterministic_history(straight)


@pytest.mark.slow
def test_changed_params_ignore_the_old_checkpoint(tmp_path, manifest_file):
    cfg = make_run(tmp_path, manifest_file, **{"train.max_steps": 2})
    train.fit(cfg, progress=False)
    messages: list[str] = []
    longer = config.load("smoke", str(cfg.run_dir), {**TINY_RUN, "train.max_steps": 3})
    result = train.fit(longer, progress=False, log=messages.append)
    assert any("other params" in m for m in messages)
    assert result["steps"] == 3


@pytest.mark.slow
def test_freezing_and_label_aware_loss_in_fit(tmp_path, manifest_file):
    cfg = make_run(tmp_path, manifest_file, **{"train.freeze_vision_layers": 1, "train.loss": "label_aware",
                                               "train.label_aware.same_labels": True, "train.max_steps": 2,
                                               "train.grad_accum_steps": 2})
    result = train.fit(cfg, progress=False)
    assert result["params"]["frozen"] > 0 and result["loss"] == "label_aware"
    assert result["grad_accum_steps"] == 2
    assert result["steps_per_epoch"] == (result["n_train"] // 8) // 2  # full batches, two per optimiser step
    base, _ = load_clip(cfg.paths.clip_base)
    tuned, _ = load_clip(cfg.paths.clip_finetuned)
    assert torch.equal(base.vision_model.embeddings.patch_embedding.weight,
                       tuned.vision_model.embeddings.patch_embedding.weight)
    assert torch.equal(base.vision_model.encoder.layers[0].mlp.fc1.weight,  # smoke's only vision block
                       tuned.vision_model.encoder.layers[0].mlp.fc1.weight)
    assert not torch.equal(base.visual_projection.weight, tuned.visual_projection.weight)
    with pytest.raises(Exception, match="only 1 blocks"):
        train.fit(make_run(tmp_path, manifest_file, "too_deep", **{"train.freeze_vision_layers": 2}), progress=False)


@pytest.mark.slow
def test_time_budget_plans_the_schedule(tmp_path, manifest_file):
    cfg = make_run(tmp_path, manifest_file, **{"train.max_steps": None, "train.epochs": 5000, "train.max_minutes": 0.1})
    result = train.fit(cfg, progress=False)
    assert 1 <= result["planned_steps"] < 5000 * result["steps_per_epoch"]
    assert result["stopped_early"] == "max_minutes"
    assert result["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-4 * cfg.train.lr) or \
        result["steps"] < result["planned_steps"]  # cosine decayed to zero unless the clock cut it short
    assert result["wall_s"] < 0.1 * 60 + 30  # budget plus one validation and saving on a busy machine


@pytest.mark.slow
def test_compare_losses_trains_both_with_equal_steps(tmp_path, manifest_file):
    cfg = make_run(tmp_path, manifest_file, **{"train.max_steps": 4, "train.label_aware.same_labels": True})
    table = train_compare.compare_losses(cfg, minutes=0.1, progress=False)  # no main run yet: the first loss is timed
    assert table["loss"].tolist() == ["infonce", "label_aware"]
    assert table["positives"].tolist() == ["own pair only", "same report + same labels x0.5"]
    assert table["steps"].nunique() == 1
    losses = [[e["train_loss"] for e in io.read_json(cfg.run_dir / "compare_losses" / name / "train.json")["history"]]
              for name in ("infonce", "label_aware")]
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)  # the label-aware targets reach the loss
    assert table[["val_i2t_acc", "val_t2i_acc"]].notna().all().all()
    assert (cfg.paths.metrics / "compare_losses.json").is_file()
    assert not cfg.paths.clip_finetuned.exists()  # the run's own model is untouched
    main = train.fit(cfg, progress=False)
    expected = lr_schedule.plan_steps(0.1 * 60, main["steps_per_epoch"], cfg.train.epochs, main["step_seconds"],
                                 main["val_seconds"])
    assert train_compare.steps_for_minutes(cfg, 0.1) == min(expected, 4)


@pytest.mark.slow
def test_cli_entry_point(tmp_path, manifest_file, capsys):
    cfg = make_run(tmp_path, manifest_file)
    code = training_main(["--params", "smoke", "--run", str(cfg.run_dir), "--no-progress",
                          *[f"--set={k}={v}" for k, v in {**TINY_RUN, "train.max_steps": 1}.items()]])
    assert code == 0
    assert "trained 1 steps" in capsys.readouterr().out
    assert io.read_json(cfg.paths.metrics / "train.json")["steps"] == 1
    assert training_main(["--params", "smoke", "--run", str(cfg.run_dir), "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_training_curves_figure(tmp_path):
    from medxpert_utils.viz.plots import training_curves

    history = [{"epoch": e, "step": 3 * e, "train_loss": 3.0 / e, "val_loss": 3.2 / e, "val_i2t_acc": 0.1 * e,
                "val_t2i_acc": 0.08 * e, "lr": 1e-3} for e in (1, 2, 3)]
    fig = training_curves({"history": history, "zero_shot": {"val_i2t_acc": 0.05, "val_t2i_acc": 0.04},
                           "zero_shot_untrained": True}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert len(fig.axes) == 2 and any("untrained" in t.get_text() for t in fig.axes[1].get_legend().get_texts())
    training_curves([], tmp_path / "empty.png")
    assert np.isfinite(fig.axes[0].get_lines()[0].get_ydata()).all()


def test_finished_checkpoints_serve_any_process_count_unfinished_ones_only_their_own():
    from medxpert_utils.training.state import _same_run

    key = {"train": {"lr": 1e-4}, "seed": 0, "train_data": "abc", "processes": 1}
    assert _same_run(dict(key), key, finished=False)
    assert _same_run({**key, "processes": 4}, key, finished=True)  # trained by accelerate launch, read by a notebook
    assert not _same_run({**key, "processes": 4}, key, finished=False)  # loader positions differ mid-run
    assert not _same_run({**key, "processes": 4, "seed": 1}, key, finished=True)
    assert not _same_run(None, key, finished=True)


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_global_batch(tmp_path, manifest_file, session_data_dir):
    # torchrun on CPU (gloo): 2 processes x 4 pairs see the same global batches as 1 process x 8 pairs; the
    # gathered embeddings make the loss and, after DDP's averaging, the gradients those of the global batch.
    import os
    import subprocess
    import sys

    steps = {"train.max_steps": 3, "train.max_minutes": None}
    single = train.fit(make_run(tmp_path, manifest_file, "single", **steps), progress=False)
    cfg = make_run(tmp_path, manifest_file, "ddp", **steps, **{"train.batch_size": 4})
    sets = [f"{key}={'null' if value is None else value}" for key, value in {**TINY_RUN, **steps}.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "medxpert_utils.training",
               "--", "--params", "smoke", "--run", str(cfg.run_dir), "--no-progress",
               *[arg for item in [*sets, "train.batch_size=4"] for arg in ("--set", item)]]
    env = {**os.environ, "MEDXPERT_DATA": str(session_data_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = io.read_json(cfg.paths.metrics / "train.json")
    assert ddp["processes"] == 2 and ddp["steps"] == single["steps"] == 3
    for a, b in zip(ddp["history"], single["history"], strict=True):
        assert (a["epoch"], a["step"], a["lr"]) == (b["epoch"], b["step"], b["lr"])
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)
        assert abs(a["val_i2t_acc"] - b["val_i2t_acc"]) <= 1 / single["n_val"]  # at most one near-tie flips
    one, two = _weights(tmp_path / "single" / "models" / "clip"), _weights(cfg.paths.clip_finetuned)
    base = _weights(cfg.paths.clip_base)
    moved = max(float((one[k] - base[k]).abs().max()) for k in one)
    apart = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert moved > 1e-3 and apart < 5e-5  # float summation order aside, the same training
    # the notebook (one process) finds the finished run and reports it instead of training again
    messages: list[str] = []
    again = train.fit(cfg, progress=False, log=messages.append)
    assert any("already finished" in m for m in messages)
    assert again["processes"] == 2 and again["history"] == ddp["history"]
    assert io.read_json(cfg.paths.metrics / "train.json")["history"] == ddp["history"]


def test_pace_ignores_the_warm_up_window_and_short_stalls():
    pace = lr_schedule.Pace(5)
    assert [pace.add(s) for s in (4.0, 4.0, 4.0, 0.2, 0.2)] == [None] * 5  # the first window only warms up
    stalled = [pace.add(s) for s in (0.2, 3.0, 0.2, 0.2, 3.0)]  # two slow steps of five: the median holds
    assert stalled[:4] == [None] * 4 and stalled[4] == pytest.approx(0.2)
    slowed = [pace.add(s) for s in (1.0, 1.1, 0.9, 1.0, 1.2)]  # a machine that really slowed down: re-plan by it
    assert slowed[4] == pytest.approx(1.0)
    even = lr_schedule.Pace(2)
    even.add(9.0), even.add(9.0)
    assert even.add(1.0) is None and even.add(3.0) == pytest.approx(2.0)
