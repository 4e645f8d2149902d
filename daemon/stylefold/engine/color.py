"""Colour preservation of Gatys, Bethge, Hertzmann & Shechtman 2016, "Preserving Color
in Neural Artistic Style Transfer" (arXiv:1606.05897), as pure tensor functions.

- luminance-only transfer: optimise on luminance images (style luminance matched to the
  content's mean and standard deviation, eq. 2), then put the content's chroma back;
- colour histogram matching: transform the style image linearly so that its RGB mean
  and covariance equal the content's (the "Image Analogies" square-root variant, §2.1),
  then transfer as usual.
All tensors are (1, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import torch

__all__ = ["luminance", "match_color_statistics", "match_luminance", "recombine_chroma", "rgb_to_ycbcr", "ycbcr_to_rgb"]

# ITU-R BT.601 full-range YCbCr, as JPEG uses.
_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)
_CHROMA_OFFSET = torch.tensor([0.0, 0.5, 0.5])


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    m = _RGB_TO_YCBCR.to(image)
    out = torch.einsum("ij,bjhw->bihw", m, image)
    return out + _CHROMA_OFFSET.to(image).view(1, 3, 1, 1)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    m = _YCBCR_TO_RGB.to(image)
    return torch.einsum("ij,bjhw->bihw", m, image - _CHROMA_OFFSET.to(image).view(1, 3, 1, 1))


def luminance(image: torch.Tensor) -> torch.Tensor:
    """Y as a grey 3-channel image, the form the network is fed in luminance mode."""
    return rgb_to_ycbcr(image)[:, :1].expand(-1, 3, -1, -1).contiguous()


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of the paper: L_s' = sigma_c / sigma_s * (L_s - mu_s) + mu_c."""
    mu_s, sigma_s = style_y.mean(), style_y.std()
    mu_c, sigma_c = content_y.mean(), content_y.std()
    return ((style_y - mu_s) * (sigma_c / sigma_s.clamp_min(1e-6)) + mu_c).clamp(0, 1)


def recombine_chroma(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The result's luminance with the content's Cb and Cr."""
    y = rgb_to_ycbcr(result)[:, :1]
    chroma = rgb_to_ycbcr(content)[:, 1:]
    return ycbcr_to_rgb(torch.cat([y, chroma], dim=1)).clamp(0, 1)


def match_color_statistics(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """x' = A (x - mu_s) + mu_c with A = Sigma_c^(1/2) Sigma_s^(-1/2), so that the style
    image's RGB mean and covariance become the content's (before clamping to [0, 1])."""
    xs = style.reshape(3, -1).double()
    xc = content.reshape(3, -1).double()
    mu_s, mu_c = xs.mean(1, keepdim=True), xc.mean(1, keepdim=True)
    cov_s = torch.cov(xs) + 1e-5 * torch.eye(3, dtype=xs.dtype)
    cov_c = torch.cov(xc) + 1e-5 * torch.eye(3, dtype=xs.dtype)
    a = _sqrtm(cov_c) @ torch.linalg.inv(_sqrtm(cov_s))
    out = a @ (xs - mu_s) + mu_c
    result: torch.Tensor = out.reshape(style.shape).to(style.dtype).clamp(0, 1)
    return result


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    root: torch.Tensor = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.t()
    return root
