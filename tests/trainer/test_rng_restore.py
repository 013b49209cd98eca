"""The RNG states saved in an adapter-only checkpoint are restored by the Trainer's resume
only: any other load (evaluation, inspection) leaves the process's RNGs alone."""

import random
import types

import numpy as np
import torch
from sam3.train.trainer import Trainer
from sam3.train.utils.checkpoint_utils import load_state_dict_into_model

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3

LORA = {"components": ["vision_trunk", "decoder"]}


def _model():
    return build_lora_sam3(build_sam3_arch("tiny", seed=0), LORA)


def _draws():
    """One draw from each RNG the checkpoint saves (torch CPU, numpy, Python)."""
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def _checkpoint(model):
    """A Trainer-style checkpoint saved at seed 7, and what the RNGs draw right after it."""
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    state = model.state_dict()
    return {"model": state}, _draws()


def test_other_loads_leave_the_rngs_alone():
    ckpt, _ = _checkpoint(_model())
    for load in (lambda m, sd: m.load_state_dict(sd, strict=False),
                 lambda m, sd: load_state_dict_into_model(state_dict=sd, model=m)):
        model = _model()
        torch.manual_seed(99), np.random.seed(99), random.seed(99)
        expected = _draws()
        torch.manual_seed(99), np.random.seed(99), random.seed(99)
        load(model, dict(ckpt["model"]))
        assert _draws() == expected


def test_trainer_resume_restores_the_rngs(tmp_path):
    """sam3's own ``Trainer._load_resuming_checkpoint`` (on a Trainer whose other parts are
    minimal) restores the states saved with the checkpoint."""
    model = _model()
    ckpt, after_save = _checkpoint(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    path = tmp_path / "checkpoint.pt"
    torch.save(dict(ckpt, optimizer=optimizer.state_dict(), loss={}, epoch=1, steps={"train": 3}), path)

    trainer = Trainer.__new__(Trainer)
    trainer.model = _model()
    trainer.optim = types.SimpleNamespace(optimizer=torch.optim.SGD(
        [p for p in trainer.model.parameters() if p.requires_grad], lr=0.1))
    trainer.loss = torch.nn.Module()
    trainer.checkpoint_conf = types.SimpleNamespace(skip_saving_parameters=[])
    trainer.optim_conf = types.SimpleNamespace(amp=types.SimpleNamespace(enabled=False))
    trainer.train_dataset = None
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    trainer._load_resuming_checkpoint(str(path))
    assert trainer.epoch == 1
    assert _draws() == after_save
