"""Head analysis: strategies chosen from the graph and verified by probing, on real models."""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

from softcamify.heads import analyze, split_model
from softcamify.heads.evidence import EvidenceHead, pooled_stats
from softcamify.heads.graph import POOL, steps_of


def _plan(model, size=(3, 64, 64)):
    plan, parts, evidence = analyze(model.eval(), size)
    return plan, parts, evidence


def test_resnet_head_is_linear_and_exact():
    plan, _, evidence = _plan(timm.create_model("test_resnet", num_classes=7))
    assert plan.strategy == "linear" and plan.exact
    assert plan.num_classes == 7
    assert plan.pooling == "global avg pool"
    assert plan.classifier.startswith("Linear(")
    assert plan.evidence_grid == [2, 2]
    assert isinstance(evidence, EvidenceHead) and evidence.norm is None


def test_convnext_head_needs_the_pooled_statistics():
    plan, _, evidence = _plan(timm.create_model("test_convnext", num_classes=3))
    assert plan.strategy == "normed" and plan.exact
    assert any("LayerNorm" in b for b in plan.between)
    assert evidence.norm == "layernorm"
    # the linear strategy must refuse it: moving the pooling to the end is not exact for LN heads
    assert "linear" in plan.tried


def test_nonlinear_prelogits_has_no_exact_strategy():
    plan, _, evidence = _plan(timm.create_model("mobilenetv3_small_050", num_classes=4))
    assert plan.strategy == "prelogits" and not plan.exact
    assert "Hardswish" in plan.reason
    assert {"linear", "normed"} <= set(plan.tried)


def test_max_pool_is_not_exact():
    plan, _, _ = _plan(timm.create_model("test_resnet", num_classes=4, global_pool="max"))
    assert plan.strategy == "pooled" and not plan.exact
    assert "max" in plan.reason


def test_torchvision_split_cuts_at_the_global_pool():
    model = torchvision.models.resnet18(weights=None, num_classes=6).eval()
    parts = split_model(model)
    assert parts.split == "fx"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = parts.features(x)
        assert f.shape == (2, 512, 2, 2)
        torch.testing.assert_close(parts.head(f), model(x))
    assert [s.role for s in steps_of(parts.graph)][0] == POOL


def test_user_module_with_mean_pooling_and_batchnorm_head():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2))
            self.bn = nn.BatchNorm1d(16)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.bn(self.body(x).mean(dim=(2, 3))))

    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    plan, _, evidence = _plan(net, (3, 32, 32))
    assert plan.strategy == "linear" and plan.exact


def test_evidence_head_mean_is_the_normed_head():
    torch.manual_seed(0)
    f = torch.randn(3, 8, 4, 5, dtype=torch.float64)
    ln = nn.LayerNorm(8, eps=1e-6).double()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    fc = nn.Linear(8, 3).double()
    ref = fc(ln(f.mean((2, 3))))
    head = EvidenceHead(8, 3, norm="layernorm", eps=1e-6).double()
    head.set_affine(fc.weight * ln.weight[None, :], fc.weight @ ln.bias + fc.bias)
    torch.testing.assert_close(head(f).mean((2, 3)), ref, rtol=1e-12, atol=1e-12)


def test_pooled_stats_match_timm_norms():
    from timm.layers import RmsNorm, SimpleNorm

    p = torch.randn(4, 16, dtype=torch.float64) + 0.5
    for module, kind in (
        (RmsNorm(16, eps=1e-6, affine=False), "rmsnorm"),
        (SimpleNorm(16, eps=1e-6, affine=False), "simplenorm"),
    ):
        mu, sigma = pooled_stats(p, kind, 1e-6)
        torch.testing.assert_close(module.double()(p), (p - mu[:, None]) / sigma[:, None])
