"""A PyTorch eager twin of slot_jax's Slot Attention autoencoder, for speed comparisons only.

Same layers, shapes and initialisation scheme (LeCun-normal kernels, zero biases, orthogonal GRU
recurrent kernels) as slot_jax.models; the numbers it computes are not meant to match.
"""
import math

import torch
from torch import nn


def _lecun_normal_(weight: torch.Tensor, fan_in: int) -> None:
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # flax's truncated-normal correction
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def init_like_flax(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            _lecun_normal_(m.weight, m.in_features)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            _lecun_normal_(m.weight, m.in_channels * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, nn.GRUCell):
            _lecun_normal_(m.weight_ih, m.input_size)
            for chunk in m.weight_hh.data.chunk(3, 0):
                nn.init.orthogonal_(chunk)
        else:
            continue
        for name in ("bias", "bias_ih", "bias_hh"):
            if isinstance(getattr(m, name, None), torch.Tensor):
                nn.init.zeros_(getattr(m, name))


def position_grid(height: int, width: int) -> torch.Tensor:
    ys, xs = torch.linspace(0, 1, height), torch.linspace(0, 1, width)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y, 1 - x, 1 - y], dim=-1)  # [H, W, 4]


class SoftPositionEmbed(nn.Module):
    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.project = nn.Linear(4, channels)
        self.register_buffer("grid", position_grid(height, width))

    def forward(self, x):  # x [N, C, H, W]
        return x + self.project(self.grid).permute(2, 0, 1)


class SlotAttention(nn.Module):
    def __init__(self, input_size, num_slots, slot_size, mlp_hidden, iterations, epsilon=1e-8):
        super().__init__()
        self.num_slots, self.slot_size, self.iterations, self.epsilon = num_slots, slot_size, iterations, epsilon
        self.norm_inputs, self.norm_slots, self.norm_mlp = (
            nn.LayerNorm(input_size), nn.LayerNorm(slot_size), nn.LayerNorm(slot_size))
        self.keys = nn.Linear(input_size, slot_size, bias=False)
        self.values = nn.Linear(input_size, slot_size, bias=False)
        self.queries = nn.Linear(slot_size, slot_size, bias=False)
        self.gru = nn.GRUCell(slot_size, slot_size)
        self.mlp = nn.Sequential(nn.Linear(slot_size, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, slot_size))
        self.mu = nn.Parameter(torch.zeros(1, 1, slot_size))
        self.log_sigma = nn.Parameter(torch.zeros(1, 1, slot_size))
        nn.init.xavier_uniform_(self.mu)
        nn.init.xavier_uniform_(self.log_sigma)

    def forward(self, inputs):
        batch = inputs.shape[0]
        slots = self.mu + self.log_sigma.exp() * torch.randn(batch, self.num_slots, self.slot_size,
                                                             device=inputs.device)
        inputs = self.norm_inputs(inputs)
        keys = self.keys(inputs) * self.slot_size ** -0.5
        values = self.values(inputs)
        for _ in range(self.iterations):
            queries = self.queries(self.norm_slots(slots))
            attention = torch.softmax(torch.einsum("bnd,bkd->bkn", keys, queries), dim=1) + self.epsilon
            attention = attention / attention.sum(dim=-1, keepdim=True)
            updates = torch.einsum("bkn,bnd->bkd", attention, values)
            slots = self.gru(updates.reshape(-1, self.slot_size), slots.reshape(-1, self.slot_size))
            slots = slots.reshape(batch, self.num_slots, self.slot_size)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots


def _conv(c_in, c_out, kernel, stride):
    if stride == 1:
        return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    return nn.ConvTranspose2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                              output_padding=stride - 1)  # output = stride * input, like SAME


class SlotAutoencoder(nn.Module):
    """Mirrors slot_jax.models.autoencoder.build_autoencoder(config.model) for image_size,
    model.compute_dtype included: with "bfloat16" the encoder's and decoder's convolutions run
    under bf16 autocast and the rest in float32, as in slot_jax."""

    def __init__(self, model_config, image_size):
        super().__init__()
        self.bf16 = model_config.get("compute_dtype", "float32") == "bfloat16"
        m, e, d = model_config, model_config.encoder, model_config.decoder
        layers, c_in, size = [], 3, list(image_size)
        for c_out, k, s in zip(e.channels, e.kernel_sizes, e.strides):
            layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2), nn.ReLU()]
            c_in, size = c_out, [-(-n // s) for n in size]
        self.encoder = nn.Sequential(*layers)
        self.encoder_pos = SoftPositionEmbed(c_in, *size)
        self.encoder_norm = nn.LayerNorm(c_in)
        mlp = []
        for i, width in enumerate(e.mlp_features):
            mlp.append(nn.Linear(c_in if i == 0 else e.mlp_features[i - 1], width))
            if i < len(e.mlp_features) - 1:
                mlp.append(nn.ReLU())
        self.encoder_mlp = nn.Sequential(*mlp)
        self.slot_attention = SlotAttention(e.mlp_features[-1], m.num_slots, m.slot_size, m.mlp_hidden,
                                            m.num_iterations, m.epsilon)
        self.broadcast = tuple(d.broadcast_size)
        self.decoder_pos = SoftPositionEmbed(m.slot_size, *self.broadcast)
        layers, c_in = [], m.slot_size
        for c_out, k, s in zip(d.channels, d.kernel_sizes, d.strides):
            layers += [_conv(c_in, c_out, k, s), nn.ReLU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 4, d.output_kernel_size, padding=d.output_kernel_size // 2))
        self.decoder = nn.Sequential(*layers)
        init_like_flax(self)

    def _convs(self, layers, x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return layers(x).float()

    def forward(self, image):  # image [B, 3, H, W] in [0, 1]
        features = self._convs(self.encoder, image)
        features = self.encoder_pos(features).flatten(2).transpose(1, 2)
        features = self.encoder_mlp(self.encoder_norm(features))
        slots = self.slot_attention(features)
        batch, num_slots, slot_size = slots.shape
        x = slots.reshape(batch * num_slots, slot_size, 1, 1).expand(-1, -1, *self.broadcast)
        x = self._convs(self.decoder, self.decoder_pos(x))
        x = x.reshape(batch, num_slots, 4, *x.shape[-2:])
        masks = torch.softmax(x[:, :, 3:], dim=1)
        return (masks * x[:, :, :3]).sum(dim=1)
