"""The zoo's model card says what its wall times cover: a stage resumed from a checkpoint timed its last run only."""

import json

from tasks.export_zoo import _resumed, model_card
from tasks.params import parse_params


def test_a_resumed_stage_names_the_step_its_timed_run_started_at(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the stages' metrics are read from the workspace, as export_zoo runs in one
    (tmp_path / "metrics").mkdir()
    for stage, figures in {"train_vqvae": {"start_step": 18600, "steps": 32000},
                           "train_prior": {"top_start_step": 800, "bottom_start_step": 0},
                           "pretrain_dictionary": {"start_step": 0}}.items():
        (tmp_path / "metrics" / f"{stage}.json").write_text(json.dumps(figures))
    assert _resumed("train_vqvae") == " (its last run only, resumed at step 18600)"
    assert _resumed("train_prior") == " (its last run only, resumed top at step 800)"  # the bottom started afresh
    assert _resumed("pretrain_dictionary") == ""  # a run from step 0 timed all of it
    assert _resumed("evaluate") == ""  # no metrics file: nothing to say


def test_the_card_of_a_continued_model_names_what_stage_1_continued(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no metrics, timings or benchmark here: the card says what it knows
    continued = parse_params({"pretrain": {"init_from": "checkpoints/photo-phase1.pt"}, "train": {"steps": 6000}})
    card = model_card("photo", continued, 6000, {}, "feedface")
    assert ("stage-1 steps: 6000 (batch 128, lr 0.0003), continuing the trained model `checkpoints/photo-phase1.pt`"
            in card)
    assert "unquantised pretraining steps" in model_card("photo", parse_params({}), 600, {}, "feedface")
