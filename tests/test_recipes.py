"""Recipes: parameter groups, the smoothed and mixed loss, the weight average, --recipe resolution,
the range test over parameter groups, --lr_from's setting warnings, kill-and-resume with EMA."""

import csv
import json
import math
import sys

import pytest
import torch
import torchvision
from torch import nn

import cli
import main
from lr_finder import RangeTest
from lr_source import lr_from_json
from recipes import RECIPES, setting_differences
from train_setup import TrainingLoss, build_ema, build_optimizer, parameter_groups, split_parameters

from conftest import FAST, REPO, kill_after, make_image_folder, run_cli, run_main

NVIDIA_WD = 3.0517578125e-05  # 1/32768


# ------------------------------------------------------------------- parameter groups


def test_resnet50_parameters_split_into_weights_norms_and_biases():
    model = torchvision.models.resnet50()
    kinds = split_parameters(model)
    counts = {kind: (len(named), sum(p.numel() for _, p in named)) for kind, named in kinds.items()}
    # 53 convolutions + fc.weight; 53 batch norms x (gamma, beta); fc.bias
    assert counts == {"weight": (54, 25_502_912), "norm": (106, 53_120), "bias": (1, 1000)}
    assert sum(n for n, _ in counts.values()) == len(list(model.parameters()))
    norm_names = {name for name, _ in kinds["norm"]}
    assert "layer1.0.downsample.1.weight" in norm_names and "layer4.0.downsample.1.bias" in norm_names
    assert all(name.endswith(".weight") and "bn" not in name for name, _ in kinds["weight"])
    assert [name for name, _ in kinds["bias"]] == ["fc.bias"]


def test_resnet50_optimizer_decays_each_tensor_as_its_group_says():
    model = torchvision.models.resnet50()
    opt = build_optimizer(model, "sgd", 0.1, 0.875, NVIDIA_WD, norm_weight_decay=0.0, nesterov=True)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(opt.param_groups) == 2 and [len(g["params"]) for g in opt.param_groups] == [55, 106]
    assert decay_of[id(model.conv1.weight)] == decay_of[id(model.fc.bias)] == NVIDIA_WD
    assert decay_of[id(model.bn1.weight)] == decay_of[id(model.layer3[0].downsample[1].bias)] == 0.0
    assert all(g["nesterov"] and g["momentum"] == 0.875 for g in opt.param_groups)
    three = parameter_groups(model, 1e-4, 0.0, 5e-5)
    assert [(len(g["params"]), g["weight_decay"], g["kinds"]) for g in three] == [
        (54, 1e-4, ["weight"]), (106, 0.0, ["norm"]), (1, 5e-5, ["bias"])]
    assert [len(g["params"]) for g in parameter_groups(model, 1e-4)] == [161]  # all equal: one group


def test_clipping_bounds_the_gradient_norm_of_every_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = build_optimizer(model, "sgd", 1.0, 0.0, 0.0, clip_grad_norm=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.randn(8, 4)).pow(2).sum() * 1000).backward()
    opt.step()
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert moved.norm().item() == pytest.approx(0.5, rel=1e-4)  # lr 1, no momentum: the step is the gradient


# ------------------------------------------------------------------- loss and mixing


def test_label_smoothing_matches_a_hand_computation():
    logits, eps = torch.tensor([[2.0, 0.0, -1.0]]), 0.1
    lse = math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0))
    log_p = [2.0 - lse, 0.0 - lse, -1.0 - lse]
    q = [1 - eps + eps / 3, eps / 3, eps / 3]  # target class 0
    expected = -sum(qi * lp for qi, lp in zip(q, log_p))
    assert TrainingLoss(3, eps)(logits, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)
    soft = torch.tensor([[0.7, 0.3, 0.0]])  # MixUp's targets are smoothed the same way
    q_soft = [(1 - eps) * t + eps / 3 for t in (0.7, 0.3, 0.0)]
    expected_soft = -sum(qi * lp for qi, lp in zip(q_soft, log_p))
    assert TrainingLoss(3, eps)(logits, soft).item() == pytest.approx(expected_soft, rel=1e-6)
    assert TrainingLoss(3).mix is None


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixed_targets_sum_to_one_and_weigh_what_was_mixed(mixup, cutmix):
    torch.manual_seed(3)
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6)
    for _ in range(4):
        mixed, target = TrainingLoss(6, 0.1, mixup, cutmix).mix(x.clone(), y)
        assert target.shape == (6, 6) and (target >= 0).all()
        assert target.sum(dim=1) == pytest.approx(torch.ones(6), abs=1e-6)
        lam = target[0, 0].item()  # sample 0 keeps lam of itself, gets 1 - lam of sample 5 (rolled)
        assert target[0, 5].item() == pytest.approx(1 - lam, abs=1e-6)
        own = mixed[0] - x[5]
        partner = x[0] - x[5]
        if mixup and not cutmix:
            assert torch.allclose(own, lam * partner, atol=1e-5)
        if cutmix and not mixup:  # each pixel is one image's, lam = share of the own image's pixels
            from_own = (mixed[0] == x[0]).all(dim=0).float().mean().item()
            assert from_own == pytest.approx(lam, abs=1e-6)


# ------------------------------------------------------------------- weight average


def test_ema_after_k_steps_equals_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    decay, k = 0.7, 4
    ema = build_ema(model, decay)
    snapshots = [{n: t.detach().clone() for n, t in model.state_dict().items()}]
    for _ in range(k):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        ema.update_parameters(model)
        snapshots.append({n: t.detach().clone() for n, t in model.state_dict().items()})
    averaged = ema.module.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        expected = decay ** k * snapshots[0][name] + (1 - decay) * sum(
            decay ** (k - i) * snapshots[i][name] for i in range(1, k + 1))
        assert torch.allclose(averaged[name], expected, atol=1e-6), name
    assert int(ema.n_averaged) == k + 1


# ------------------------------------------------------------------- --recipe


def test_recipe_nvidia_resolves_to_the_cited_values():
    args = cli.parse_args(["--recipe", "nvidia", "--lr", "0.1"])
    assert (args.optimizer, args.momentum, args.nesterov) == ("sgd", 0.875, False)
    assert args.weight_decay == NVIDIA_WD == 1 / 32768
    assert (args.norm_weight_decay, args.bias_weight_decay) == (0.0, NVIDIA_WD)
    assert (args.label_smoothing, args.mixup_alpha, args.cutmix_alpha) == (0.1, 0.0, 0.0)
    assert (args.scheduler, args.warmup_epochs, args.epochs) == ("cosine", 8, 90)
    assert RECIPES["nvidia"]["lr_per_256"] == 0.256 and RECIPES["torchvision"]["lr_per_256"] == 0.1
    classic = cli.parse_args(["--recipe", "torchvision", "--lr", "0.1"])
    assert (classic.momentum, classic.weight_decay, classic.norm_weight_decay, classic.label_smoothing) == \
        (0.9, 1e-4, 1e-4, 0.0)
    assert (classic.scheduler, classic.step_size, classic.gamma, classic.epochs) == ("step", 30, 0.1, 90)


def test_a_flag_given_on_the_command_line_wins_over_the_recipe():
    args = cli.parse_args(["--recipe", "nvidia", "--lr", "0.1", "--momentum", "0.9", "--epochs", "2",
                            "--warmup_epochs", "0", "--weight_decay", "5e-5"])
    assert (args.momentum, args.epochs, args.warmup_epochs) == (0.9, 2, 0)
    assert (args.weight_decay, args.norm_weight_decay, args.bias_weight_decay) == (5e-5, 0.0, 5e-5)
    assert args.label_smoothing == 0.1 and "momentum" not in args.recipe_settings
    demo = cli.parse_args(["--recipe", "nvidia", "--find_lr", "--demo"])  # the recipe's SGD over the demo's AdamW
    assert (demo.optimizer, demo.dataset, demo.input_size) == ("sgd", "digits", 16)
    assert cli.parse_args(["--recipe", "nvidia", "--find_lr", "--demo", "--optimizer", "adamw"]).optimizer == "adamw"


@pytest.mark.parametrize("flags,message", [
    (["--recipe", "fast"], "argument --recipe: invalid choice: 'fast'"),
    (["--label_smoothing", "1"], "--label_smoothing 1 must be in [0, 1)"),
    (["--label_smoothing", "-0.1"], "--label_smoothing -0.1 must be in [0, 1)"),
    (["--mixup_alpha", "-0.2"], "--mixup_alpha -0.2 must be 0 or more"),
    (["--cutmix_alpha", "-1"], "--cutmix_alpha -1 must be 0 or more"),
    (["--norm_weight_decay", "-0.001"], "--norm_weight_decay -0.001 must be 0 or more"),
    (["--weight_decay", "-1"], "--weight_decay -1 must be 0 or more"),
    (["--model_ema", "--model_ema_decay", "1"], "--model_ema_decay 1 must be in (0, 1)"),
    (["--model_ema", "--model_ema_decay", "0"], "--model_ema_decay 0 must be in (0, 1)"),
    (["--model_ema_decay", "0.99"], "--model_ema_decay goes with --model_ema"),
    (["--optimizer", "adamw", "--nesterov"], "--nesterov applies to SGD"),
    (["--recipe", "nvidia", "--epochs", "5"], "--recipe nvidia sets --warmup_epochs 8, which does not fit --epochs 5"),
])
def test_bad_recipe_values_are_one_line_errors_with_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main.main(["--lr", "0.1", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and message in err[0], err


def test_help_lists_what_each_recipe_sets():
    proc = run_cli("main.py", "--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    assert "nvidia: optimizer sgd, momentum 0.875, nesterov False, weight_decay 3.0517578125e-05, " \
           "norm_weight_decay 0.0, bias_weight_decay = --weight_decay, label_smoothing 0.1" in text
    assert "torchvision: optimizer sgd, momentum 0.9" in text and "step_size 30, gamma 0.1" in text


# ------------------------------------------------------------------- the range test


def test_range_test_sweeps_all_groups_together_with_their_own_decay_and_mixes_only_training_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = build_optimizer(model, "sgd", 1e-4, 0.9, 1e-4, norm_weight_decay=0.0, bias_weight_decay=0.0)
    loss = TrainingLoss(3, 0.1, mixup_alpha=0.4)
    seen = []

    class Recording(nn.Module):
        def forward(self, logits, target):
            seen.append((target.ndim, [g["lr"] for g in opt.param_groups],
                         [g["weight_decay"] for g in opt.param_groups]))
            return loss(logits, target)

    data = torch.utils.data.TensorDataset(torch.rand(32, 3, 2, 2), torch.arange(32) % 3)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    finder = RangeTest(model, opt, Recording(), "cpu", batch_transform=loss.mix)
    finder.range_test(loader, val_loader=loader, start_lr=1e-4, end_lr=1.0, num_iter=5)
    train = [s for s in seen if s[0] == 2]
    assert len(train) == 5 and len([s for s in seen if s[0] == 1]) == 5 * 4  # val: 4 batches, unmixed
    rates = [lrs[0] for _, lrs, _ in train]
    assert rates == pytest.approx([1e-4 * 10 ** k for k in range(5)])
    assert all(lrs == [lrs[0]] * len(lrs) for _, lrs, _ in train)
    assert all(decays == [1e-4, 0.0] for _, _, decays in train)


# ------------------------------------------------------------------- --lr_from


def test_lr_from_warns_once_per_rate_moving_setting_that_differs(tmp_path):
    swept = {"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
             "norm_weight_decay": 1e-4, "bias_weight_decay": 1e-4, "label_smoothing": 0.0,
             "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "clip_grad_norm": None}
    found = tmp_path / "suggested_lr.json"
    found.write_text(json.dumps({"success": True, "suggested_lr": 0.05, "schema_version": 2, "answer": {
        "global_batch_size": 64, "optimizer": "sgd", "recipe": "torchvision", "rate_settings": swept}}))
    training = {**swept, "norm_weight_decay": 0.0, "label_smoothing": 0.1, "mixup_alpha": 0.2}
    lr, record = lr_from_json(str(found), 256, "sgd", False, training)
    assert lr == pytest.approx(0.2) and record["sweep_recipe"] == "torchvision"
    assert record["setting_warnings"] == [
        "warning: the sweep used norm_weight_decay 0.0001 and training uses 0.0, so the rate may not carry over",
        "warning: the sweep used label_smoothing 0.0 and training uses 0.1, so the rate may not carry over",
        "warning: the sweep used mixup_alpha 0.0 and training uses 0.2, so the rate may not carry over"]
    # momentum means nothing to AdamW: only the optimizer itself is named
    adamw = setting_differences(swept, {**swept, "optimizer": "adamw", "momentum": 0.5})
    assert adamw == ["warning: the sweep used optimizer sgd and training uses adamw, so the rate may not carry over"]


# ------------------------------------------------------------------- kill and resume with EMA

TRAIN = ["--recipe", "nvidia", "--lr", "0.02", "--epochs", "2", "--warmup_epochs", "0", *FAST, "--input_size", "16",
         "--seed", "1", "--mixup_alpha", "0.2", "--cutmix_alpha", "1.0", "--model_ema", "--model_ema_decay", "0.8",
         "--no_plots"]
STEPS_PER_EPOCH = 6  # 3 classes x 8 images, batch 4


def test_kill_and_resume_with_ema_and_mixing_matches_the_uninterrupted_run(tmp_path):
    data = make_image_folder(tmp_path / "data", size=24)
    code, stdout, err = run_main("--data_dir", data, "--output_dir", tmp_path / "full", *TRAIN)
    assert code == 0, err
    assert "recipe nvidia: label smoothing 0.1, weight decay 3.05176e-05 (norm layers 0, biases 3.05176e-05)" \
           in stdout and "EMA val loss" in stdout
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert (config["recipe"], config["momentum"], config["norm_weight_decay"], config["label_smoothing"]) == \
        ("nvidia", 0.875, 0.0, 0.1)
    assert config["recipe_settings"]["weight_decay"] == NVIDIA_WD and "warmup_epochs" not in config["recipe_settings"]

    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "main.py"), "--data_dir", str(data), "--output_dir", str(out), *TRAIN,
           "--checkpoint_every", "1"]
    kill_after(cmd, out / "last.pt", 4, STEPS_PER_EPOCH)
    killed_at = torch.load(out / "last.pt", weights_only=True)
    assert (killed_at["epoch"], killed_at["step_in_epoch"]) != (2, 0) and "ema" in killed_at
    code, stdout, err = run_main("--data_dir", data, "--output_dir", out, *TRAIN, "--checkpoint_every", "1",
                                 "--resume", "auto")
    assert code == 0, err
    assert "Resuming from" in stdout

    def rows(path):
        return list(csv.DictReader(path.open()))

    for a, b in zip(rows(tmp_path / "full" / "metrics.csv"), rows(out / "metrics.csv"), strict=True):
        for key in ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "ema_val_loss", "ema_val_top1"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.allclose(a[part][k].float(), b[part][k].float(), atol=1e-5) for k in a[part]), part
    assert int(a["ema"]["n_averaged"]) == 2 * STEPS_PER_EPOCH + 1
    assert not torch.allclose(a["ema"]["module.fc.weight"], a["model"]["fc.weight"])  # the average lags


def test_resume_refuses_another_recipe_setting(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1, size=24)
    flags = ["--data_dir", str(data), "--output_dir", str(tmp_path / "o"), *TRAIN[:-1]]
    flags[flags.index("--epochs") + 1] = "1"
    assert main.main(flags) == 0
    capsys.readouterr()
    assert main.main([*flags, "--label_smoothing", "0.2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label_smoothing: checkpoint 0.1 vs now 0.2" in err[0]
