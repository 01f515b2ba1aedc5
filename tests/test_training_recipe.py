"""The 2026 winners' training switches on tiny data: a distillation stage over the chunks and the soundscape windows
then fine-tuning from it (`init_from`), a specialist run on a class subset, extra training folders, the soft-AUC
loss."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from omegaconf import OmegaConf

from src.data.competition import CompetitionError, select_classes
from src.train import train
from src.training.batches import extra_batch_sizes
from src.training.step import soft_auc_loss
from tests.pipeline import compose_named


def test_a_distillation_stage_then_fine_tuning_from_it(tiny_pipeline, tiny_teacher):
    stage = train(tiny_pipeline.train_config("exp=dstage", "distill.stage=true", "distill.teacher=tinyperch",
                                             "distill.weight=0.5", "train.epochs=2"))
    run = tiny_pipeline.runs_dir / "dstage" / "fold0"
    assert stage["stage"] == "distill" and -1 <= stage["distill_cos"] <= 1 and not (run / "oof.parquet").exists()
    log = pl.read_csv(run / "log.csv")
    assert "distill_cos" in log.columns and np.isfinite(log["train_loss"].to_numpy()).all()
    # every training chunk and the train soundscape windows (2 soundscapes of the tiny pipeline), none of fold 0's
    # validation chunks
    chunks = pl.read_parquet(tiny_pipeline.root / "cache" / "chunks.parquet").filter(~pl.col("silent"))
    folds = pl.read_csv(tiny_pipeline.root / "folds" / "tiny_2fold.csv")
    train_chunks = chunks.join(folds, on="filename").filter(pl.col("fold") != 0).height
    assert stage["n_train_windows"] > train_chunks
    tuned = train(tiny_pipeline.train_config("exp=dtuned", "init_from=dstage", "train.epochs=1"))
    assert tuned["auc"] >= 0 and (tiny_pipeline.runs_dir / "dtuned" / "fold0" / "oof.parquet").exists()
    start = torch.load(run / "best.pt", weights_only=True)["model"]
    assert any(k.startswith("backbone.") for k in start)
    with pytest.raises(ValueError, match="a mobilenetv3_small_100 checkpoint, not regnety_002"):
        train(tiny_pipeline.train_config("exp=dwrong", "init_from=dstage", "model=regnety_002"))
    with pytest.raises(FileNotFoundError, match="init_from=nothing"):
        train(tiny_pipeline.train_config("exp=dwrong", "init_from=nothing"))


def test_a_specialist_trains_and_predicts_its_classes_only(tiny_pipeline):
    classes = json.loads((tiny_pipeline.root / "cache" / "manifest.json").read_text())["classes"]
    subset = classes[:2]
    metrics = train(tiny_pipeline.train_config("exp=specialist", f"data.classes=[{','.join(subset)}]",
                                               "train.epochs=1"))
    run = tiny_pipeline.runs_dir / "specialist" / "fold0"
    assert list(OmegaConf.load(run / "config.yaml").classes) == subset
    oof = pl.read_parquet(run / "oof.parquet")
    assert [c for c in oof.columns if c in classes] == subset
    assert set(metrics["per_class_auc"]) <= set(subset)
    assert pl.read_parquet(run / "oof_soundscape.parquet").select(subset).width == 2


def test_class_subsets_by_name_and_taxon_and_their_errors(tmp_path):
    taxonomy = tmp_path / "taxonomy.csv"
    pl.DataFrame({"primary_label": ["a", "b", "c"], "class_name": ["Aves", "Insecta", "Amphibia"]}).write_csv(taxonomy)
    classes = ["a", "b", "c"]
    assert select_classes(None, classes, tmp_path, "birdclef2026") == classes
    assert select_classes(["c", "a"], classes, tmp_path, "birdclef2026") == ["a", "c"]
    assert select_classes({"class_name": ["Insecta", "Amphibia"]}, classes, tmp_path, "birdclef2026") == ["b", "c"]
    with pytest.raises(CompetitionError, match=r"\['zz'\] are not columns"):
        select_classes(["zz"], classes, tmp_path, "birdclef2026")
    with pytest.raises(CompetitionError, match=r"taxon \['Fungi'\].*taxonomy.csv"):
        select_classes({"class_name": ["Fungi"]}, classes, tmp_path, "birdclef2026")


def test_soft_auc_loss_decreases_on_a_separable_batch():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    target = (x[:, :2] > 0).float()  # two classes, each separable by one input
    layer = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    mask = torch.ones_like(target)
    losses = []
    for _ in range(60):
        loss = soft_auc_loss(layer(x), target, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < 0.15
    assert float(soft_auc_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 2))) == 0.0  # no pair: no loss


def test_the_soft_auc_switch_trains(tiny_pipeline):
    metrics = train(tiny_pipeline.train_config("exp=softauc", "train.loss=soft_auc", "train.epochs=1"))
    log = pl.read_csv(tiny_pipeline.runs_dir / "softauc" / "fold0" / "log.csv")
    assert np.isfinite(log["train_loss"].to_numpy()).all() and 0 <= metrics["auc"] <= 1


def test_extra_training_folders_are_merged_by_label_and_never_validated(tmp_path, capsys, caplog):
    from conftest import add_recording, make_tiny_competition, prepare_config, tone

    from src.data.splits import split_fold
    from src.folds import write_folds
    from src.prepare import prepare

    root = make_tiny_competition(tmp_path / "comp", n_classes=2, per_class=2)
    extra = make_tiny_competition(tmp_path / "xc", n_classes=1, per_class=2)  # bird0 only
    add_recording(extra, "bird9/XC9.ogg", "bird9", tone(6.0, 5000.0))  # a label outside the competition's
    add_recording(extra, "bird0/missing.ogg", "bird0", None)  # listed, but no audio file
    overrides = [f"folds.dir={tmp_path / 'folds'}", "folds.n=2", "folds.group=filename", f"data.extra=[{extra}]"]
    cfg = prepare_config(root, tmp_path / "cache", *overrides)
    write_folds(cfg, report=False)
    summary = prepare(cfg)
    out = capsys.readouterr()
    assert summary["sources"] == {"competition": 4, "xc": 3} and summary["extra_classes"] == []
    assert "recordings per source" in out.out
    assert "['bird9']" in caplog.text and "dropped" in caplog.text  # the label outside the classes, reported
    assert any("missing.ogg" in problem for _, problem in summary["bad_files"])
    chunks = pl.read_parquet(tmp_path / "cache" / "chunks.parquet")
    extra_chunks = chunks.filter(pl.col("source") == "xc")
    assert extra_chunks.height > 0 and extra_chunks["filename"].str.starts_with("extra/xc/").all()
    for fold in (0, 1):
        fold_cfg = prepare_config(root, tmp_path / "cache", *overrides, f"fold={fold}")
        train_df, val_df = split_fold(chunks, fold_cfg)
        assert not val_df["filename"].str.starts_with("extra/").any()  # never validated on
        assert set(extra_chunks["filename"]) <= set(train_df["filename"])
    keep = prepare_config(root, tmp_path / "cache_keep", *overrides, "data.extra_classes=keep")
    assert prepare(keep)["extra_classes"] == ["bird9"]


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "recipe").glob("*.yaml")))
def test_every_recipe_gives_students_a_valid_training_config(recipe):
    """Each recipe's students compose with its train_overrides into a config `src.train` accepts up front (mixing
    probabilities of the pseudo-labelled and labelled windows at most 1 together); the 2026 CNN recipe chains the
    distillation stage (init_from) into the rounds."""
    cfg = compose_named("selftrain", f"recipe={recipe}", "round0=x")
    for student in cfg.students:
        if student.command != "train":
            continue
        train_cfg = compose_named("train", *student.overrides, *cfg.train_overrides, "pseudo.path=p.parquet")
        extra_batch_sizes(train_cfg)  # raises on ratios that leave no clip
        mixing = [train_cfg[s].mixup.p for s in ("pseudo", "labelled")
                  if train_cfg[s].mode == "mixup" and (s == "pseudo" or train_cfg.labelled.mode != "none")]
        assert sum(mixing) <= 1.0
        if recipe == "distilled_cnn_2026":
            assert train_cfg.init_from == "cnn_distill" and train_cfg.pseudo.mixup.cap == 0.75
            assert train_cfg.labelled.mixup.cap == 0.5
