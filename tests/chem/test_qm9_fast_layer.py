"""QM9GraphFlow's fewer-FLOP layer computes GraphTransformerFlow's maths: same logits, same gradients."""
import torch

from tfftmol.chem.model import GraphTransformerConfig, GraphTransformerFlow
from tfftmol.chem.qm9_model import QM9GraphFlow, load_qm9_graph


def _reference_logits(model, x, t):
    return GraphTransformerFlow.logits(model, x, t)  # the layers' own forward (model.py)


def test_shipped_model_logits_and_input_gradients_equal_the_reference():
    m = load_qm9_graph()
    g = torch.Generator().manual_seed(3)
    x, t = 2 * torch.randn(64, 189, generator=g), torch.rand(64, generator=g)
    with torch.no_grad():
        for a, b in zip(m.logits(x, t), _reference_logits(m, x, t)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    xr = x.clone().requires_grad_(True)
    g1, = torch.autograd.grad(sum(z.square().sum() for z in m.logits(xr, t)), xr)
    g2, = torch.autograd.grad(sum(z.square().sum() for z in _reference_logits(m, xr, t)), xr)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4 * float(g2.abs().max()))


def test_one_time_for_the_whole_batch_gives_the_per_row_result():
    """A sampling step (every row at the same t) embeds t once; rows equal the reference, in any batch size."""
    m = load_qm9_graph()
    x = 2 * torch.randn(40, 189, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for tv in (0.0, 0.37, 0.99, 1.0):
            t = torch.full((40,), tv)
            for a, b in zip(m.logits(x, t), _reference_logits(m, x, t)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(m(x, torch.tensor(tv)), m(x, t))          # a scalar t broadcasts
            torch.testing.assert_close(m(x[:1], t[:1]), m(x, t)[:1], rtol=1e-5, atol=1e-4)


def test_random_weights_and_parameter_gradients_equal_the_reference():
    torch.manual_seed(0)
    m = QM9GraphFlow(GraphTransformerConfig(d_node=16, d_edge=8, n_layers=2, n_heads=2))
    for p in m.parameters():  # zero-initialised output layers would hide a wrong pair or message path
        torch.nn.init.normal_(p, std=0.3)
    x, t = torch.randn(5, 189), torch.rand(5)
    out = m.logits(x, t)
    ref = _reference_logits(m, x, t)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ga = torch.autograd.grad(sum(z.sum() for z in out), list(m.parameters()))
    gb = torch.autograd.grad(sum(z.sum() for z in ref), list(m.parameters()))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
