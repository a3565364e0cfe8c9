"""The one flow-matching loop: a smoke test and a known answer."""
import torch

from tfftmol.core.sampling import sample
from tfftmol.toy2d.flows import MLPFlow
from tfftmol.training import train_flow_matching


def test_one_step_changes_the_parameters_and_the_loss_is_finite():
    torch.manual_seed(0)
    m = MLPFlow(hidden=16, layers=2)
    before = [p.detach().clone() for p in m.parameters()]
    losses = train_flow_matching(m, m.parameters(), torch.randn(50, 2), steps=1, batch_size=8)
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses[0]))
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_a_point_mass_is_learned():
    """Data all at (1, -2): the learned flow carries noise there (ODE samples' mean within 0.15)."""
    torch.manual_seed(0)
    m = MLPFlow(hidden=64, layers=3)
    data = torch.tensor([[1.0, -2.0]]).repeat(256, 1)
    losses = train_flow_matching(m, m.parameters(), data, steps=400, batch_size=128, lr=3e-3, seed=1)
    assert losses[-1] < 0.2 * losses[0]
    x = sample(m, 2000, method="heun", steps=20, generator=torch.Generator().manual_seed(2)).x
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -2.0]), atol=0.15), x.mean(0)


def test_labels_are_dropped_to_the_null_label_at_the_given_rate():
    seen = []

    def velocity(xt, t, c):
        seen.append(c.clone())
        return torch.zeros_like(xt, requires_grad=True)

    p = torch.nn.Parameter(torch.zeros(1))
    train_flow_matching(velocity, [p], torch.randn(100, 3), torch.zeros(100, dtype=torch.long), steps=20,
                        batch_size=500, p_uncond=0.25, null_label=7)
    frac = float((torch.cat(seen) == 7).float().mean())
    assert abs(frac - 0.25) < 0.02
