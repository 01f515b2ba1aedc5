"""A tiny end-to-end pipeline for the tests: synth -> folds -> prepare -> train, in a temp folder.

Built once per test session (`tiny_pipeline` fixture in conftest) and shared read-only by the
training, ensemble and kernel tests; each stage runs through the same functions as the commands.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from src import config as _config  # noqa: F401  (registers the root_tag resolver)

REPO = Path(__file__).resolve().parents[1]
SYNTH = ["synth.n_species=4", "synth.recordings_per_species=[4,5]", "synth.max_duration_s=12",
         "synth.n_train_soundscapes=2", "synth.n_test_soundscapes=2", "synth.progress=false", "synth.workers=1"]


@dataclass
class TinyPipeline:
    root: Path          # everything lives under here
    data_root: Path     # the synthetic competition
    runs_dir: Path
    overrides: list[str]  # what every train/ensemble call of this pipeline passes

    def train_config(self, *extra: str) -> DictConfig:
        return compose_train(*self.overrides, *extra)


def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def compose_named(name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def build_tiny_pipeline(root: Path, exps: dict[str, str]) -> TinyPipeline:
    """Synthesise, fold, prepare, and train one fold for each `exp -> model config name`."""
    from src.folds import write_folds
    from src.prepare import prepare
    from src.synth import make_competition
    from src.train import train

    data_root = root / "comp"
    synth_cfg = compose_named("synth", *SYNTH)
    make_competition(data_root, synth_cfg.synth)
    overrides = [f"data.root={data_root}", "data.name=tiny", f"data.cache_dir={root / 'cache'}",
                 f"folds.dir={root / 'folds'}", f"runs_dir={root / 'runs'}", "experiment=tiny", "prepare.workers=1"]
    pipe = TinyPipeline(root, data_root, root / "runs", overrides)
    cfg = pipe.train_config()
    write_folds(cfg, report=False)
    prepare(cfg)
    for exp, model in exps.items():
        train(pipe.train_config(f"exp={exp}", f"model={model}"))
    return pipe


def saved_config(run_fold_dir: Path) -> DictConfig:
    return OmegaConf.load(run_fold_dir / "config.yaml")


def teacher_overrides(pipe: TinyPipeline, model: Path, labels: Path, name: str = "tinyperch") -> list[str]:
    """What `python -m src.teacher` / `src.probe` get for the tiny Perch-signature teacher on this pipeline."""
    return [*pipe.overrides, "teacher=perch", f"teacher.path={model}", f"teacher.labels={labels}",
            f"teacher.name={name}", "teacher_cache.workers=1", "teacher_cache.mix.copies=1", "probe.epochs=100"]


def add_teacher_runs(pipe: TinyPipeline, folder: Path) -> tuple[list[str], list[str]]:
    """Build the tiny teacher (it knows every class but the last), cache it over the pipeline and write its
    zero-shot run `tinyperch` and probe run `tinyperch_probe` (fold 0); returns (overrides, classes)."""
    from src.data.competition import read_classes
    from src.probe import train_probe
    from src.teacher import build_cache
    from tests.fake_teacher import write_fake_perch

    classes = read_classes(pipe.data_root / "sample_submission.csv")
    model, labels = write_fake_perch(folder, [*classes[:-1], "Nullus avis_Ghost Bird"])
    overrides = teacher_overrides(pipe, model, labels)
    build_cache(compose_named("teacher", *overrides))
    train_probe(compose_named("teacher", *overrides, "probe.head=zero_shot"))
    train_probe(compose_named("teacher", *overrides, "probe.zero_shot_weight=0.5"))
    return overrides, classes
