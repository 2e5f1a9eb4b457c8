"""MMRazor/MMEngine .py configs as they are: read without executing them, mapped onto the recipe with every key in
exactly one of three lists (used, ignored, refused), trained directly, converted to TOML that gives the same run.

The configs below are written the way the seed's team wrote theirs (distill1.py: HRNet-W18 result distillation,
L2 on `backbone.last_layer.3`; distill2.py: the same fine-tuned from a checkpoint through `_base_`; distill4.py:
PIDNet-M; distill1.2.py: the decode loss) and as MMRazor's docs write the CWD and KD examples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.distill.config import load_recipe, recipe_to_json
from harness.distill.mmconfig import ConfigError, merge, read_config
from harness.distill.mmport import PortError, covers, leaf_keys, port_config

TEAM_MAP = {"StudentHRNetW18": "hrnet_w18", "TeacherMdecoder": "hrnet_w48"}

DISTILL1 = """\
# distill1.py: HRNet-W18 student, result distillation (L2 on the one-channel mask logits) from the Mdecoder teacher
default_scope = 'mmrazor'

data_root = 'data/dataset3_3k'
teacher_ckpt = 'checkpoints/Mdecoder_210000.pth'
STUDENT_USE_TEACHER_MASK = False

model = dict(
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    architecture=dict(type='StudentHRNetW18', pretrained=False),
    teacher=dict(type='TeacherMdecoder', pretrained=False),
    teacher_ckpt=teacher_ckpt,
    teacher_trainable=False,
    teacher_norm_eval=True,
    student_trainable=True,
    calculate_student_loss=True,
    distiller=dict(
        type='ConfigurableDistiller',
        student_recorders=dict(
            logits=dict(type='ModuleOutputs', source='backbone.last_layer.3')),
        teacher_recorders=dict(
            logits=dict(type='ModuleOutputs', source='backbone.last_layer.3')),
        distill_losses=dict(loss_l2=dict(type='L2Loss', loss_weight=10)),
        loss_forward_mappings=dict(
            loss_l2=dict(
                s_feature=dict(from_student=True, recorder='logits'),
                t_feature=dict(from_student=False, recorder='logits')))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(400, 400), keep_ratio=False),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='WMDataset', data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='WMDataset', data_root='data/dataset2', test_mode=True, pipeline=train_pipeline))
val_evaluator = dict(type='BitAccMetric', student_use_teacher_mask=STUDENT_USE_TEACHER_MASK)
val_cfg = dict(type='mmrazor.SingleTeacherDistillValLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
    clip_grad=dict(max_norm=5.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=51, eta_min=1e-6, by_epoch=True, begin=1, end=52,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=52, val_interval=1)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, save_best='student_bit_acc', rule='greater',
                    max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook'))
custom_hooks = [
    dict(type='EarlyStoppingHook', monitor='student_bit_acc', rule='greater', patience=10, min_delta=0),
    dict(type='BitAccEvalHook', interval=1, save_json=True),
]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
work_dir = './work_dirs/{{fileBasenameNoExtension}}'
"""

# distill2.py: distill1's student fine-tuned from its 52-epoch checkpoint on 3000 fixed-watermark scenes
DISTILL2 = """\
_base_ = './distill1.py'

student_ckpt = 'work_dirs/distill_52/best_student_bit_acc_epoch_52.pth'
model = dict(
    architecture=dict(init_cfg=dict(type='Pretrained', checkpoint=student_ckpt)),
    teacher_ckpt='{{_base_.teacher_ckpt}}')
train_dataloader = dict(batch_size=4, dataset=dict(data_root='data/dataset4_fixed'))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, weight_decay=5e-4))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=0, end=18750)]
train_cfg = dict(max_epochs=25, val_interval=5)
default_hooks = dict(checkpoint=dict(interval=5))
work_dir = _base_.work_dir
"""

# distill4.py: PIDNet-M (m=2, n=3, planes=64, ppm_planes=96, head_planes=128, augment=False, num_classes=1)
DISTILL4 = """\
_base_ = ['./distill1.py']

model = dict(
    architecture=dict(_delete_=True, type='PIDNet', m=2, n=3, planes=64, ppm_planes=96, head_planes=128,
                      augment=False, num_classes=1),
    distiller=dict(
        student_recorders=dict(logits=dict(source='backbone.final_layer.conv2')),
    ))
train_cfg = dict(max_epochs=7)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False, begin=200),
]
"""

# distill1.2.py: the decode loss (min over 0/±3° of BCE(SDecoder(ROI), secret)) + L2 mask distillation
DISTILL1_2 = """\
_base_ = './distill1.py'

STUDENT_USE_TEACHER_MASK = False
model = dict(
    architecture=dict(
        type='StudentHRNetW18WithSDecoderLoss',
        decode_loss_weight=1.0,
        decode_angles=[0, 3, -3],
        student_use_teacher_mask=STUDENT_USE_TEACHER_MASK))
train_dataloader = dict(dataset=dict(data_root='WMdemo/workdir/test/dataset6'))
train_cfg = dict(max_epochs=24)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=23, eta_min=1e-6, by_epoch=True, begin=1, end=24,
         convert_to_iter_based=True),
]
"""

# MMRazor's CWD example (configs/distill/mmseg/cwd/cwd_logits_pspnet_r101-d8_pspnet_r18-d8_...py), as in its docs
CWD = """\
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py',
    'mmseg::_base_/schedules/schedule_80k.py',
    'mmseg::_base_/default_runtime.py'
]

teacher_ckpt = 'CWD_TEACHER_URL'  # noqa: E501
teacher_cfg_path = 'mmseg::pspnet/pspnet_r101-d8_4xb2-80k_cityscapes-512x1024.py'  # noqa: E501
student_cfg_path = 'mmseg::pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py'  # noqa: E501
model = dict(
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    architecture=dict(cfg_path=student_cfg_path, pretrained=False),
    teacher=dict(cfg_path=teacher_cfg_path, pretrained=False),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type='ConfigurableDistiller',
        distill_losses=dict(
            loss_cwd=dict(type='ChannelWiseDivergence', tau=1, loss_weight=5)),
        student_recorders=dict(
            logits=dict(type='ModuleOutputs', source='decode_head.conv_seg')),
        teacher_recorders=dict(
            logits=dict(type='ModuleOutputs', source='decode_head.conv_seg')),
        loss_forward_mappings=dict(
            loss_cwd=dict(
                preds_S=dict(from_student=True, recorder='logits'),
                preds_T=dict(from_student=False, recorder='logits')))))

find_unused_parameters = True

val_cfg = dict(_delete_=True, type='mmrazor.SingleTeacherDistillValLoop')
"""

# MMRazor's KD example (configs/distill/mmcls/kd/kd_logits_resnet34_resnet18_8xb32_in1k.py), as in its docs
KD = """\
_base_ = [
    'mmcls::_base_/datasets/imagenet_bs32.py',
    'mmcls::_base_/schedules/imagenet_bs256.py',
    'mmcls::_base_/default_runtime.py'
]

teacher_ckpt = 'KD_TEACHER_URL'  # noqa: E501

model = dict(
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        # RGB format normalization parameters
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        # convert image from BGR to RGB
        bgr_to_rgb=True),
    architecture=dict(
        cfg_path='mmcls::resnet/resnet18_8xb32_in1k.py', pretrained=False),
    teacher=dict(
        cfg_path='mmcls::resnet/resnet34_8xb32_in1k.py', pretrained=True),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type='ConfigurableDistiller',
        student_recorders=dict(
            fc=dict(type='ModuleOutputs', source='head.fc')),
        teacher_recorders=dict(
            fc=dict(type='ModuleOutputs', source='head.fc')),
        distill_losses=dict(
            loss_kl=dict(type='KLDivergence', tau=1, loss_weight=3)),
        loss_forward_mappings=dict(
            loss_kl=dict(
                preds_S=dict(from_student=True, recorder='fc'),
                preds_T=dict(from_student=False, recorder='fc')))))

find_unused_parameters = True

val_cfg = dict(_delete_=True, type='mmrazor.SingleTeacherDistillValLoop')
"""
# the teachers' URLs, too long for a line here, as the configs have them
CWD = CWD.replace("CWD_TEACHER_URL", "https://download.openmmlab.com/mmsegmentation/v0.5/pspnet/"
                  "pspnet_r101-d8_512x1024_80k_cityscapes/pspnet_r101-d8_512x1024_80k_cityscapes_20200606_112211-"
                  "e1e1100f.pth")
KD = KD.replace("KD_TEACHER_URL", "https://download.openmmlab.com/mmclassification/v0/resnet/"
                "resnet34_8xb32_in1k_20210831-f257d4e6.pth")


def _write(folder: Path, **files: str) -> Path:
    """Write `name=text` files (name `distill1_2` → `distill1.2.py`); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name.replace('_', '.')}.py").write_text(text)
    return folder


def _port(path: Path, model_map=None, dataset_size=3000, known=None):
    return port_config(read_config(path), {**TEAM_MAP, **(model_map or {})}, dataset_size, known)


def _lists(port) -> dict[str, dict[str, str]]:
    return {"used": {e.key: e.note for e in port.used}, "ignored": {e.key: e.note for e in port.ignored},
            "refused": {e.key: e.note for e in port.refused}}


def _assert_partition(port, data) -> None:
    """Every leaf key of the config is covered by exactly one entry, and every entry names a key of the config."""
    entries = [*port.used, *port.ignored, *port.refused]
    leaves = leaf_keys(data)
    for leaf in leaves:
        owners = [e.key for e in entries if covers(e.key, leaf)]
        assert len(owners) == 1, (leaf, owners)
    for entry in entries:
        assert any(covers(entry.key, leaf) for leaf in leaves) or entry.note.startswith("missing"), entry


# ---------------------------------------------------------------------------------------------- the reader


def test_reader_keeps_literals_dicts_names_and_file_vars(tmp_path):
    cfg = read_config(_write(tmp_path, distill1=DISTILL1) / "distill1.py")
    assert cfg.data["model"]["teacher_ckpt"] == "checkpoints/Mdecoder_210000.pth"  # a name assigned earlier
    assert cfg.data["train_dataloader"]["dataset"]["pipeline"][1]["scale"] == (400, 400)
    assert cfg.data["work_dir"] == "./work_dirs/distill1"
    assert {"data_root", "teacher_ckpt", "train_pipeline", "vis_backends"} <= cfg.helpers
    assert cfg.unread_bases == ()
    assert cfg.lines["model"] == f"{tmp_path / 'distill1.py'}:8"


def test_base_merge_delete_and_base_references(tmp_path):
    _write(tmp_path, distill1=DISTILL1, distill2=DISTILL2)
    cfg = read_config(tmp_path / "distill2.py").data
    assert cfg["model"]["architecture"] == {  # merged key by key into the base's architecture
        "type": "StudentHRNetW18", "pretrained": False,
        "init_cfg": {"type": "Pretrained", "checkpoint": "work_dirs/distill_52/best_student_bit_acc_epoch_52.pth"}}
    assert cfg["model"]["teacher_ckpt"] == "checkpoints/Mdecoder_210000.pth"  # '{{_base_.teacher_ckpt}}'
    assert cfg["model"]["distiller"]["distill_losses"] == {"loss_l2": {"type": "L2Loss", "loss_weight": 10}}
    assert cfg["optim_wrapper"] == {"type": "OptimWrapper",  # _delete_: the base's clip_grad is gone
                                    "optimizer": {"type": "SGD", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4}}
    assert cfg["train_dataloader"]["batch_size"] == 4 and cfg["train_dataloader"]["num_workers"] == 4
    assert cfg["train_cfg"] == {"type": "EpochBasedTrainLoop", "max_epochs": 25, "val_interval": 5}
    assert cfg["work_dir"] == "./work_dirs/distill1"  # _base_.work_dir: the base's value, file vars of the base


def test_merge_follows_mmengine():
    base = {"a": {"x": 1, "y": {"z": 2}}, "b": [1, 2], "c": 3}
    assert merge(base, {"a": {"y": {"w": 4}}, "b": [3]}) == {"a": {"x": 1, "y": {"z": 2, "w": 4}}, "b": [3], "c": 3}
    assert merge(base, {"a": {"_delete_": True, "q": 0}}) == {"a": {"q": 0}, "b": [1, 2], "c": 3}
    assert base == {"a": {"x": 1, "y": {"z": 2}}, "b": [1, 2], "c": 3}  # inputs untouched
    with pytest.raises(ConfigError, match="cannot be merged"):
        merge(base, {"c": {"k": 1}})


def test_braced_base_reference_without_quotes_and_duplicate_base_keys(tmp_path):
    _write(tmp_path, a="lr = 0.1\nopt = dict(lr=lr)\n", b="lr = 0.2\n",
           child="_base_ = ['./a.py']\noptimizer = {{_base_.opt}}\nscaled = _base_.lr * 2\n",
           both="_base_ = ['./a.py', './b.py']\n")
    data = read_config(tmp_path / "child.py").data
    assert data["optimizer"] == {"lr": 0.1} and data["scaled"] == 0.2 and data["opt"] == {"lr": 0.1}
    with pytest.raises(ConfigError, match=r"both\.py:1: key 'lr' is defined by more than one base"):
        read_config(tmp_path / "both.py")


def test_pure_python_bases_bring_their_names(tmp_path):
    """MMEngine's new style: `with read_base(): from .distill1 import *`; the names are usable by name and a
    reassignment replaces (Python's semantics, not a merge)."""
    _write(tmp_path, distill1=DISTILL1, child="""\
from mmengine.config import read_base

with read_base():
    from .distill1 import *
    from .distill1 import teacher_ckpt as mdecoder

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=10, val_interval=1)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.02, momentum=0.9))
model['teacher_ckpt'] = mdecoder
""")
    with pytest.raises(ConfigError, match=r"child\.py:9: assignment to Subscript"):  # model.update() etc. too
        read_config(tmp_path / "child.py")
    (tmp_path / "child.py").write_text((tmp_path / "child.py").read_text().replace(
        "model['teacher_ckpt'] = mdecoder\n", "teacher = dict(ckpt=mdecoder, student=data_root)\n"))
    cfg = read_config(tmp_path / "child.py")
    assert cfg.data["teacher"] == {"ckpt": "checkpoints/Mdecoder_210000.pth", "student": "data/dataset3_3k"}
    assert cfg.data["default_scope"] == "mmrazor" and cfg.data["mdecoder"] == "checkpoints/Mdecoder_210000.pth"
    assert cfg.data["optim_wrapper"] == {"type": "OptimWrapper",  # replaced whole: no clip_grad from the base
                                         "optimizer": {"type": "SGD", "lr": 0.02, "momentum": 0.9}}
    port = _port(tmp_path / "child.py")
    assert "not a setting this converter knows" in _lists(port)["refused"]["teacher"]
    assert {"mdecoder", "data_root"} <= set(_lists(port)["ignored"])  # variables used by a key


@pytest.mark.parametrize("text, line, construct", [
    ("import os\nmodel = dict()\n", 1, "import"),
    ("lr = 0.1\nmodel = dict(type=get_model())\n", 2, "call to get_model()"),
    ("x = 1\n\nlr = float('1e-3')\n", 3, "call to float()"),
    ("model = dict(type=__import__('os').system('true'))\n", 1, "call to __import__"),
    ("layers = [dict(i=i) for i in range(3)]\n", 1, "list comprehension"),
    ("fn = lambda x: x\n", 1, "lambda"),
    ("def f():\n    pass\n", 1, "function definition"),
    ("custom_imports = dict(imports=['mmrazor.models.custom.wm_models'], allow_failed_imports=False)\n", 1,
     "custom_imports"),
    ("model = dict(type=undefined)\n", 1, "name 'undefined' is not assigned"),
    ("with open('x') as f:\n    pass\n", 1, "with statement"),
    ("from mmengine.config import read_base\nwith read_base():\n    x = 1\n", 3, "only `from .base import ...`"),
    ("from mmrazor.models import SingleTeacherDistill\n", 1, "import"),
])
def test_reader_refuses_code_naming_file_line_and_construct(tmp_path, text, line, construct):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_config(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and construct in str(err.value)


def test_package_bases_are_named_and_the_file_is_read_on(tmp_path):
    cfg = read_config(_write(tmp_path, cwd=CWD) / "cwd.py")
    assert cfg.unread_bases == ("mmseg::_base_/datasets/cityscapes.py", "mmseg::_base_/schedules/schedule_80k.py",
                                "mmseg::_base_/default_runtime.py")
    assert cfg.data["model"]["distiller"]["distill_losses"]["loss_cwd"]["type"] == "ChannelWiseDivergence"
    assert cfg.data["val_cfg"] == {"type": "mmrazor.SingleTeacherDistillValLoop"}  # _delete_ removed


# ---------------------------------------------------------------------------------------------- the mapping


def test_distill1_maps_onto_the_recipe_with_every_key_listed(tmp_path):
    path = _write(tmp_path, distill1=DISTILL1) / "distill1.py"
    port = _port(path)
    _assert_partition(port, read_config(path).data)
    assert port.refused == []
    recipe = port.recipe()
    assert (recipe.model.name, recipe.teacher.name, recipe.teacher.ckpt) == (
        "hrnet_w18", "hrnet_w48", "checkpoints/Mdecoder_210000.pth")
    assert recipe.distiller == read_config(path).data["model"]["distiller"]  # passed through as written
    assert (recipe.data.source, recipe.data.root, recipe.data.batch_size, recipe.data.num_workers) == (
        "folder", "data/dataset3_3k", 8, 4)
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.weight_decay, recipe.optim.grad_clip,
            recipe.optim.amp) == ("adamw", 1e-3, 1e-4, 5.0, False)
    # 3000 scenes / batch 8 = 375 steps an epoch: 52 epochs, warm-up 1 epoch, validation and checkpoint every epoch
    assert (recipe.run.max_steps, recipe.run.val_every, recipe.run.ckpt_every, recipe.run.log_every) == (
        19500, 375, 375, 50)
    assert (recipe.schedule.name, recipe.schedule.warmup_steps, recipe.schedule.warmup_ratio) == ("cosine", 375, 0.01)
    assert recipe.schedule.min_lr_ratio == pytest.approx(1e-3)
    assert (recipe.validation.metric, recipe.validation.root, recipe.validation.batch_size) == (
        "student_bit_acc", "data/dataset2", 1)
    assert recipe.run.early_stop_patience == 10 and recipe.run.seed == 0
    lists = _lists(port)
    assert lists["used"]["model.architecture.type"] == (
        'model.name = "hrnet_w18" (--model-map StudentHRNetW18=hrnet_w18)')
    assert lists["ignored"]["visualizer"].startswith("visualisation")
    assert "env_cfg" in lists["ignored"] and "log_processor" in lists["ignored"]
    assert "1 epoch = 3000 scenes (--dataset-size) / batch 8 (⌈⌉) = 375 steps" in port.conversions[0]
    assert "train_cfg.max_epochs = 52 epochs × 375 = 19500 steps" in port.conversions


def test_dataset_size_comes_from_the_folder_manifest(tmp_path):
    folder = tmp_path / "data" / "dataset3_3k"
    folder.mkdir(parents=True)
    (folder / "manifest.csv").write_text("id,file,secret\n" + "".join(f"s{i},s{i}.png,\n" for i in range(20)))
    path = _write(tmp_path, distill1=DISTILL1.replace("'data/dataset3_3k'", repr(str(folder)))) / "distill1.py"
    port = _port(path, dataset_size=None)
    assert port.recipe().run.max_steps == 52 * 3  # ⌈20 / 8⌉ = 3 steps an epoch
    assert f"rows of {folder}/manifest.csv" in port.conversions[0]
    unknown = _port(_write(tmp_path / "other", distill1=DISTILL1) / "distill1.py", dataset_size=None)
    assert "pass --dataset-size N" in _lists(unknown)["refused"]["train_cfg.max_epochs"]


def test_distill2_fine_tunes_from_a_checkpoint_through_its_base(tmp_path):
    _write(tmp_path, distill1=DISTILL1, distill2=DISTILL2)
    path = tmp_path / "distill2.py"
    port = _port(path)
    _assert_partition(port, read_config(path).data)
    recipe = port.recipe()
    assert recipe.model.init_ckpt == "work_dirs/distill_52/best_student_bit_acc_epoch_52.pth"
    assert recipe.teacher.ckpt == "checkpoints/Mdecoder_210000.pth"
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.momentum, recipe.optim.weight_decay) == (
        "sgd", 1e-4, 0.9, 5e-4)
    assert recipe.optim.grad_clip == 0.0  # the deleted optim_wrapper had clip_grad; MMEngine then does not clip
    # 3000 / 4 = 750 steps an epoch: 25 epochs; PolyLR by steps over all of them
    assert (recipe.run.max_steps, recipe.run.val_every, recipe.run.ckpt_every) == (18750, 3750, 3750)
    assert (recipe.schedule.name, recipe.schedule.power, recipe.schedule.warmup_steps) == ("poly", 0.9, 0)
    assert recipe.data.root == "data/dataset4_fixed" and recipe.data.batch_size == 4


def test_pidnet_config_maps_by_model_map_and_checks_the_options(tmp_path):
    _write(tmp_path, distill1=DISTILL1, distill4=DISTILL4)
    path = tmp_path / "distill4.py"
    port = _port(path, {"PIDNet": "pidnet_m"})
    _assert_partition(port, read_config(path).data)
    recipe = port.recipe()
    assert recipe.model.name == "pidnet_m"
    assert recipe.distiller["student_recorders"]["logits"]["source"] == "backbone.final_layer.conv2"
    lists = _lists(port)
    assert lists["used"]["model.architecture.num_classes"] == "1: the value pidnet_m has already"
    assert "--model-map declares" in lists["ignored"]["model.architecture.planes"]
    assert (recipe.run.max_steps, recipe.schedule.warmup_steps, recipe.schedule.warmup_ratio) == (7 * 375, 200, 0.001)
    unmapped = _lists(port_config(read_config(path), TEAM_MAP, 3000))["refused"]
    assert "no registered model for 'PIDNet'; pass --model-map PIDNet=NAME" in unmapped["model.architecture.type"]


def test_decode_loss_config(tmp_path):
    _write(tmp_path, distill1=DISTILL1, distill1_2=DISTILL1_2)
    path = tmp_path / "distill1.2.py"
    port = _port(path, {"StudentHRNetW18WithSDecoderLoss": "hrnet_w18"})
    _assert_partition(port, read_config(path).data)
    recipe = port.recipe()
    assert recipe.model.name == "hrnet_w18" and recipe.loss.decode_weight == 1.0
    assert recipe.loss.decode_angles == (0.0, 3.0, -3.0)
    assert recipe.validation.student_use_teacher_mask is False
    assert recipe.data.root == "WMdemo/workdir/test/dataset6" and recipe.run.max_steps == 24 * 375
    assert recipe.distiller["distill_losses"]["loss_l2"]["type"] == "L2Loss"  # decode loss + mask distillation


@pytest.mark.parametrize("name, text, losses", [("cwd", CWD, "loss_cwd (ChannelWiseDivergence)"),
                                                 ("kd", KD, "loss_kl (KLDivergence)")])
def test_mmrazor_examples_are_read_and_reported(tmp_path, name, text, losses):
    path = _write(tmp_path, **{name: text}) / f"{name}.py"
    port = port_config(read_config(path))
    _assert_partition(port, read_config(path).data)
    lists = _lists(port)
    assert losses in lists["used"]["model.distiller"]  # the distiller ports as written
    for side in ("architecture", "teacher"):  # mmseg::/mmcls:: configs: not models of ours
        assert "no registered model for 'mm" in lists["refused"][f"model.{side}.cfg_path"]
    assert "checkpoints are read from local files only" in lists["refused"]["model.teacher_ckpt"]
    assert "find_unused_parameters" in lists["ignored"] and "val_cfg" in lists["ignored"]
    assert "the unread base(s)" in lists["refused"]["optim_wrapper"]
    report = port.report()
    assert "package bases not read" in report and "refused:" in report
    with pytest.raises(PortError, match="refused, nothing run"):
        port.recipe()


@pytest.mark.parametrize("change, key, reason", [
    (("teacher_trainable=False", "teacher_trainable=True"), "model.teacher_trainable", "not supported"),
    (("teacher_norm_eval=True", "teacher_norm_eval=False"), "model.teacher_norm_eval", "not supported"),
    (("type='AdamW', lr=1e-3", "type='RMSprop', lr=1e-3"), "optim_wrapper.optimizer.type", "SGD and AdamW"),
    (("type='AdamW', lr=1e-3, weight_decay=1e-4", "type='Adam', lr=1e-3, weight_decay=1e-4"),
     "optim_wrapper.optimizer.type", "not AdamW's"),
    (("rule='greater',\n", "rule='less',\n"), "default_hooks.checkpoint.rule", "higher-is-better"),
    (("load_from = None", "load_from = 'work_dirs/distill_52/epoch_52.pth'"), "load_from", "init_cfg"),
    (("resume = False", "resume = True"), "resume", "--resume"),
    (("save_best='student_bit_acc'", "save_best='mIoU'"), "default_hooks.checkpoint.save_best", "student_bit_acc"),
    (("log_level = 'INFO'", "log_level = 'INFO'\nmystery = 3"), "mystery", "not a setting"),
])
def test_settings_the_recipe_lacks_are_refused(tmp_path, change, key, reason):
    assert DISTILL1.count(change[0]) == 1
    path = _write(tmp_path, distill1=DISTILL1.replace(*change)) / "distill1.py"
    port = _port(path)
    _assert_partition(port, read_config(path).data)
    assert reason in _lists(port)["refused"][key]
    with pytest.raises(PortError, match=key.replace(".", r"\.")):
        port.recipe()


def test_amp_sgd_defaults_and_constant_rate(tmp_path):
    text = DISTILL1.replace("""optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
    clip_grad=dict(max_norm=5.0, norm_type=2))""", "optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic', "
                                                   "optimizer=dict(type='SGD', lr=0.01))")
    text = text[:text.index("param_scheduler = [")] + text[text.index("train_cfg = "):]
    recipe = _port(_write(tmp_path, distill1=text) / "distill1.py").recipe()
    assert (recipe.optim.amp, recipe.optim.name, recipe.optim.momentum, recipe.optim.weight_decay,
            recipe.optim.grad_clip) == (True, "sgd", 0.0, 0.0, 0.0)  # torch's SGD defaults; MMEngine does not clip
    assert (recipe.schedule.name, recipe.schedule.power, recipe.schedule.warmup_steps) == ("poly", 0.0, 0)


def test_a_plain_training_config_trains_the_model_alone(tmp_path):
    """A config whose model is an architecture (no SingleTeacherDistill): the student alone, named by its type."""
    text = DISTILL1[:DISTILL1.index("model = dict(")] + "model = dict(type='HRNetW18')\n" + DISTILL1[
        DISTILL1.index("train_pipeline = ["):]
    port = _port(_write(tmp_path, distill1=text) / "distill1.py", model_map={})
    # a variable nothing reads is not known to be harmless (a misspelt key looks the same): refused
    assert _lists(port)["refused"] == {"teacher_ckpt": "not a setting this converter knows"}
    text = text.replace("teacher_ckpt = 'checkpoints/Mdecoder_210000.pth'\n", "")
    port = _port(_write(tmp_path, distill1=text) / "distill1.py", model_map={})
    recipe = port.recipe()
    assert recipe.model.name == "hrnet_w18" and recipe.teacher is None and recipe.distiller is None
    assert _lists(port)["used"]["model.type"] == 'model.name = "hrnet_w18" (the registered model of that name)'


# ---------------------------------------------------------------------------------------------- commands


def _main(argv, capsys):
    from harness.distill.__main__ import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


MAP_ARGS = ["--model-map", "StudentHRNetW18=hrnet_w18", "--model-map", "TeacherMdecoder=hrnet_w48",
            "--dataset-size", "3000"]


def test_convert_then_load_gives_the_recipe_of_the_py(tmp_path, capsys):
    _write(tmp_path, distill1=DISTILL1, distill2=DISTILL2, distill1_2=DISTILL1_2)
    for name, extra in (("distill1", []), ("distill2", []),
                        ("distill1.2", ["--model-map", "StudentHRNetW18WithSDecoderLoss=hrnet_w18"])):
        code, out, err = _main(["convert", str(tmp_path / f"{name}.py"), *MAP_ARGS, *extra], capsys)
        assert code == 0, err
        assert "# used:" in out and "# ignored:" in out and "# refused:" in out
        toml = tmp_path / f"{name}.toml"
        toml.write_text(out)
        from_py = _port(tmp_path / f"{name}.py", {"StudentHRNetW18WithSDecoderLoss": "hrnet_w18"}).recipe()
        assert load_recipe(toml) == from_py
        assert recipe_to_json(load_recipe(toml)) == recipe_to_json(from_py)  # the same config.json


def test_convert_refuses_with_the_lists(tmp_path, capsys):
    code, out, err = _main(["convert", str(_write(tmp_path, kd=KD) / "kd.py")], capsys)
    assert code == 2 and "refused:" in out and "model.teacher_ckpt" in err
    code, _, err = _main(["convert", str(_write(tmp_path, bad="import os\n") / "bad.py")], capsys)
    assert code == 2 and "bad.py:1: import" in err


def test_train_accepts_a_py_and_prints_the_lists_first(tmp_path, capsys, monkeypatch):
    import harness.distill.trainer as trainer
    from harness.distill.trainer import RunState

    seen = {}

    def fake_train(recipe, out, **kw):
        seen["recipe"] = recipe
        print("TRAINING")
        return RunState(step=recipe.run.max_steps)

    monkeypatch.setattr(trainer, "train", fake_train)
    path = _write(tmp_path, distill1=DISTILL1) / "distill1.py"
    code, out, _ = _main(["train", str(path), "--out", str(tmp_path / "run"), *MAP_ARGS], capsys)
    assert code == 0
    assert out.index("used:") < out.index("ignored:") < out.index("refused:") < out.index("TRAINING")
    assert seen["recipe"] == _port(path).recipe()
    code, out, err = _main(["train", str(path), "--out", str(tmp_path / "run")], capsys)  # no --model-map
    assert code == 2 and "no registered model for 'StudentHRNetW18'" in err and "TRAINING" not in out


def test_a_py_trains_end_to_end_with_tiny_models(tmp_path):
    """Two steps of distill1.py's shape on the tiny world: teacher checkpoint, folder data, validation folder."""
    from harness.distill.trainer import Builders, train
    from tests.distill_world import save_teacher, tiny_localizer, tiny_scenes, tiny_sdecoder, write_scenes

    train_root = write_scenes(tmp_path / "train", tiny_scenes(6, 5))
    val_root = write_scenes(tmp_path / "val", tiny_scenes(2, 9))
    ckpt = save_teacher(str(tmp_path / "teacher.pt"))
    text = (DISTILL1.replace("'data/dataset3_3k'", repr(str(train_root)))
            .replace("'data/dataset2'", repr(str(val_root)))
            .replace("'checkpoints/Mdecoder_210000.pth'", repr(ckpt))
            .replace("batch_size=8,\n    num_workers=4", "batch_size=2,\n    num_workers=0")
            .replace("type='EpochBasedTrainLoop', max_epochs=52, val_interval=1",
                     "type='IterBasedTrainLoop', max_iters=2, val_interval=2"))
    text = text[:text.index("param_scheduler = [")] + (
        "param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1),\n"
        "                   dict(type='CosineAnnealingLR', by_epoch=False, begin=1, end=2)]\n"
    ) + text[text.index("train_cfg = "):]
    path = _write(tmp_path, distill1=text) / "distill1.py"
    port = port_config(read_config(path), {"StudentHRNetW18": "tiny_student", "TeacherMdecoder": "tiny_teacher"},
                       known_models=("tiny_student", "tiny_teacher"))
    _assert_partition(port, read_config(path).data)
    recipe = port.recipe()
    assert (recipe.run.max_steps, recipe.schedule.warmup_steps, recipe.data.root) == (2, 1, str(train_root))
    state = train(recipe, tmp_path / "run", builders=Builders(localizer=tiny_localizer, sdecoder=tiny_sdecoder),
                  progress=False)
    assert state.step == 2 and (tmp_path / "run" / "student.pt").exists()
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert events.count("train") == 1  # log_every = 50 (the LoggerHook's interval): only the last step logs
    assert "dry_run" in events and events.count("val") == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == json.loads(recipe_to_json(recipe))
    # the converted TOML is the same run, bit for bit
    (tmp_path / "distill1.toml").write_text(port.toml())
    from_toml = load_recipe(tmp_path / "distill1.toml")
    assert from_toml == recipe
    train(from_toml, tmp_path / "run_toml", builders=Builders(localizer=tiny_localizer, sdecoder=tiny_sdecoder),
          progress=False)
    a = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "run_toml" / "last.pt", weights_only=True)["student"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "run" / "config.json").read_text() == (tmp_path / "run_toml" / "config.json").read_text()


def test_the_docs_show_the_actual_convert_output(tmp_path, capsys, monkeypatch):
    """docs/distillation.md pastes `convert distill1.py`'s output: it must be what convert prints today."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "distillation.md").read_text()
    section = docs[docs.index("## Run your config"):]
    pasted = section[section.index("```toml\n") + len("```toml\n"):]
    pasted = pasted[:pasted.index("```")]
    monkeypatch.chdir(_write(tmp_path, distill1=DISTILL1))
    code, out, err = _main(["convert", "distill1.py", *MAP_ARGS], capsys)
    assert code == 0, err
    assert out == pasted
